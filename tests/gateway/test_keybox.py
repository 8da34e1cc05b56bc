"""Upstream API keys are sealed at rest (``usage.keybox``): what the database holds, the
rotation of the secret, a key no secret opens, and the migration that sealed old keys."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.core.management import CommandError, call_command

from usage import channels, keybox
from usage.models import UpstreamChannel

pytestmark = pytest.mark.django_db

KEY = "sk-or-v1-0123456789abcdef-provider-key"


@pytest.fixture(autouse=True)
def _uncached(settings: Any) -> None:
    settings.GATEWAY_CHANNEL_CACHE_SECONDS = 0
    settings.UPSTREAM_KEY_SECRET = "secret-a"
    settings.UPSTREAM_KEY_PREVIOUS_SECRETS = []


def _save(name: str = "router", key: str = KEY) -> UpstreamChannel:
    return channels.upstream_channel_save(
        channel=UpstreamChannel(name=name, base_url="https://up.example/v1"), api_key=key
    )


def _stored(name: str = "router") -> str:
    return str(UpstreamChannel.objects.values_list("api_key", flat=True).get(name=name))


def _keys() -> dict[str, str]:
    return {c.name: c.api_key for c in channels.channel_list_for_gateway()}


def test_the_database_holds_only_the_sealed_key() -> None:
    _save()
    stored = _stored()
    assert stored.startswith("fernet:")
    assert KEY not in stored and "provider-key" not in stored and "0123456789" not in stored
    assert _keys() == {"router": KEY}
    # Sealing is randomized: the same key twice is stored differently.
    _save("second")
    assert _stored("second") != stored


def test_a_rotated_secret_still_opens_old_keys_and_reseal_moves_them(settings: Any) -> None:
    _save()
    under_a = _stored()
    settings.UPSTREAM_KEY_SECRET = "secret-b"
    settings.UPSTREAM_KEY_PREVIOUS_SECRETS = ["secret-a"]
    assert _keys() == {"router": KEY}

    call_command("upstream_keys_reseal")
    assert _stored() != under_a
    settings.UPSTREAM_KEY_PREVIOUS_SECRETS = []  # the old secret retired
    assert _keys() == {"router": KEY}


def test_a_key_no_secret_opens_is_skipped_and_never_sent_or_logged(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _save("lost")
    settings.UPSTREAM_KEY_SECRET = "secret-c"
    _save("kept", key="sk-other-key-1234")
    before = {name: _stored(name) for name in ("lost", "kept")}

    with caplog.at_level(logging.ERROR):
        assert _keys() == {"kept": "sk-other-key-1234"}
    assert "upstream channel lost skipped" in caplog.text
    assert "provider-key" not in caplog.text

    with pytest.raises(CommandError, match="channel lost"):
        call_command("upstream_keys_reseal")
    assert {name: _stored(name) for name in ("lost", "kept")} == before  # all or nothing


def test_the_migration_seals_keys_stored_in_clear_and_its_reverse_opens_them() -> None:
    _save()
    UpstreamChannel.objects.filter(name="router").update(api_key=KEY)  # as before sealing
    migration = importlib.import_module("usage.migrations.0007_upstream_keys_sealed")

    migration.seal_stored_keys(django_apps, None)
    assert keybox.is_sealed(_stored()) and _keys() == {"router": KEY}
    migration.seal_stored_keys(django_apps, None)  # twice: sealed once
    assert keybox.unseal(_stored()) == KEY

    migration.open_stored_keys(django_apps, None)
    assert _stored() == KEY
