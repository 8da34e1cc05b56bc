"""Upstream channels in the admin (the key is write-only), their validation, the default
channel from the environment, and ``authorization_fail`` (the settle of a failed call)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, credit
from tests.usage.conftest import make_token
from usage import channels, keybox, services
from usage.channels import InvalidChannel
from usage.models import UpstreamChannel, UsageRecord
from wallet.models import Hold, Wallet

pytestmark = pytest.mark.django_db

KEY = "sk-or-v1-secret-upstream-key-7f3a"


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def _form(**overrides: Any) -> dict[str, Any]:
    data = {
        "name": "openrouter",
        "base_url": "https://openrouter.ai/api/v1/",
        "new_api_key": KEY,
        "model_map": '{"test-chat": "openai/gpt-4o-mini"}',
        "priority": "5",
        "enabled": "on",
    }
    data.update(overrides)
    return data


def test_the_admin_stores_the_key_and_never_shows_it_again(admin_client: Client) -> None:
    response = admin_client.post("/admin/usage/upstreamchannel/add/", _form())
    assert response.status_code == 302, response.content

    channel = UpstreamChannel.objects.get()
    assert (keybox.unseal(channel.api_key), channel.api_key_hint) == (KEY, "7f3a")
    assert KEY not in channel.api_key  # sealed at rest
    assert channel.base_url == "https://openrouter.ai/api/v1"
    assert channel.model_map == {"test-chat": "openai/gpt-4o-mini"}
    for url in (
        "/admin/usage/upstreamchannel/",
        f"/admin/usage/upstreamchannel/{channel.pk}/change/",
    ):
        page = admin_client.get(url).content.decode()
        assert KEY not in page and "secret-upstream" not in page
        assert "…7f3a" in page


def test_saving_without_a_new_key_keeps_the_stored_one(admin_client: Client) -> None:
    admin_client.post("/admin/usage/upstreamchannel/add/", _form())
    channel = UpstreamChannel.objects.get()

    response = admin_client.post(
        f"/admin/usage/upstreamchannel/{channel.pk}/change/",
        _form(new_api_key="", priority="9"),
    )

    assert response.status_code == 302
    channel.refresh_from_db()
    assert (keybox.unseal(channel.api_key), channel.priority) == (KEY, 9)


def test_a_bad_model_map_is_refused(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/usage/upstreamchannel/add/", _form(model_map='["not", "a", "mapping"]')
    )
    assert response.status_code == 200
    assert "The model mapping must be a JSON object" in response.content.decode()
    with pytest.raises(InvalidChannel):
        channels.upstream_channel_save(
            channel=UpstreamChannel(name="x", base_url="https://a.example", model_map=["no"])
        )
    with pytest.raises(InvalidChannel):
        channels.upstream_channel_save(channel=UpstreamChannel(name="x", base_url="ftp://a"))
    assert not UpstreamChannel.objects.exists()


def test_channels_are_tried_by_priority_and_default_to_the_environment(settings: Any) -> None:
    settings.UPSTREAM_BASE_URL = "https://up.example/v1"
    settings.UPSTREAM_API_KEY = "sk-hidden-123"
    (default,) = channels.channel_list_for_gateway()
    assert (default.name, default.base_url) == ("default", "https://up.example/v1")
    assert default.api_key == "sk-hidden-123" and "hidden" not in repr(default)

    for name, priority, enabled in [("low", 1, True), ("high", 5, True), ("off", 9, False)]:
        UpstreamChannel.objects.create(
            name=name, base_url="https://x.example", priority=priority, enabled=enabled
        )
    assert [c.name for c in channels.channel_list_for_gateway()] == ["high", "low"]


def test_a_failed_call_releases_its_hold_and_is_recorded_once_with_nothing_charged(
    user: Any, prices: Any
) -> None:
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "1")
    token, _ = make_token(user)
    authorization = services.authorization_create(
        token=token, model="test-search", messages=[{"role": "user", "content": "hi"}]
    ).authorization
    report = services.UsageReport(
        usage=services.pricing.Usage(), status=UsageRecord.Status.FAILED, error="upstream 500"
    )

    first = services.authorization_fail(authorization=authorization, report=report)
    again = services.authorization_fail(authorization=authorization, report=report)

    record = first.record
    # test-search has a per-request fee: a failed call does not pay it.
    assert (record.status, record.cost_micro, record.charged_micro) == ("failed", 0, 0)
    assert record.request_usd == 0 and record.usd_cost == 0
    assert again.replayed and again.record.pk == record.pk
    assert Hold.objects.get().status == Hold.Status.RELEASED
    fresh = Wallet.objects.get(pk=wallet.pk)
    assert (fresh.balance, fresh.held) == (1_000_000, 0)
    assert_ledger_ok(wallet)
