"""Staff tools in the Django admin: price versions, token groups, tokens, records."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiToken, TokenGroup
from tests.factories import UserFactory
from tests.usage.conftest import make_token
from usage.models import ModelPrice

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def price_form(**overrides: object) -> dict[str, object]:
    # Five minutes ahead, date and time of the same moment (so near midnight too).
    starts = timezone.localtime() + dt.timedelta(minutes=5)
    data: dict[str, object] = {
        "model": "test-chat",
        "display_name": "Test Chat",
        "provider": "Test",
        "category": "chat",
        "input_usd_per_mtok": "3.00",
        "cached_input_usd_per_mtok": "",
        "output_usd_per_mtok": "12",
        "reasoning_usd_per_mtok": "",
        "request_usd": "0",
        "unit_usd": "0",
        "unit_name": "",
        "max_output_tokens": "",
        "active": "on",
        "effective_from_0": starts.strftime("%Y-%m-%d"),
        "effective_from_1": starts.strftime("%H:%M:%S"),
    }
    data.update(overrides)
    return data


def test_a_price_change_is_a_new_version(admin_client: Client, prices) -> None:  # type: ignore[no-untyped-def]
    old = prices["chat"]
    page = admin_client.get(f"/admin/usage/modelprice/add/?copy={old.pk}")
    assert page.status_code == 200 and b'value="test-chat"' in page.content
    response = admin_client.post("/admin/usage/modelprice/add/", price_form())
    assert response.status_code == 302, response.content[:2000]
    versions = ModelPrice.objects.filter(model="test-chat").order_by("effective_from")
    assert [str(v.output_usd_per_mtok) for v in versions] == ["10.000000", "12.000000"]
    assert versions.last().created_by.is_superuser
    # the old version is untouched and cannot be edited
    assert admin_client.get(f"/admin/usage/modelprice/{old.pk}/change/").status_code == 200
    admin_client.post(f"/admin/usage/modelprice/{old.pk}/change/", price_form())
    assert ModelPrice.objects.get(pk=old.pk).output_usd_per_mtok == 10


def test_a_price_cannot_take_effect_in_the_past(admin_client: Client, prices) -> None:  # type: ignore[no-untyped-def]
    yesterday = timezone.now() - dt.timedelta(days=1)
    response = admin_client.post(
        "/admin/usage/modelprice/add/",
        price_form(effective_from_0=yesterday.strftime("%Y-%m-%d")),
    )
    assert response.status_code == 200 and b"cannot take effect in the past" in response.content
    assert ModelPrice.objects.filter(model="test-chat").count() == 1


def test_making_a_group_default_moves_the_flag(admin_client: Client) -> None:
    tier = account_services.token_group_default().tier
    response = admin_client.post(
        "/admin/accounts/tokengroup/add/",
        {"name": "partners", "tier": tier.pk, "allowed_models": '["gpt-*"]', "is_default": "on"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert list(TokenGroup.objects.filter(is_default=True).values_list("name", flat=True)) == [
        "partners"
    ]
    bad = admin_client.post(
        "/admin/accounts/tokengroup/add/",
        {"name": "bad", "tier": tier.pk, "allowed_models": '["has space"]'},
    )
    assert bad.status_code == 200 and not TokenGroup.objects.filter(name="bad").exists()


def test_staff_edit_limits_and_revoke_tokens(admin_client: Client, user) -> None:  # type: ignore[no-untyped-def]
    token, _ = make_token(user)
    assert admin_client.get("/admin/accounts/apitoken/add/").status_code == 403
    response = admin_client.post(
        f"/admin/accounts/apitoken/{token.pk}/change/",
        {
            "name": "renamed",
            "group": token.group_id,
            "quota_micro": "5000000",
            "expires_at_0": "",
            "expires_at_1": "",
            "allowed_models": "[]",
            "allowed_ips": '["10.0.0.1/8"]',
        },
    )
    assert response.status_code == 302, response.content[:3000]
    token.refresh_from_db()
    assert (token.name, token.quota_micro, token.allowed_ips) == (
        "renamed",
        5_000_000,
        ["10.0.0.0/8"],
    )
    admin_client.post(
        "/admin/accounts/apitoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    assert ApiToken.objects.get(pk=token.pk).status == "revoked"


def test_usage_pages_are_read_only_and_load(admin_client: Client, api, funded) -> None:  # type: ignore[no-untyped-def]
    api.post("/api/v1/usage", {"model": "test-chat", "input_tokens": 5}, HTTP_IDEMPOTENCY_KEY="a")
    assert admin_client.get("/admin/usage/usagerecord/").status_code == 200
    assert admin_client.get("/admin/usage/usagerecord/add/").status_code == 403
    assert admin_client.get("/admin/usage/authorization/").status_code == 200
