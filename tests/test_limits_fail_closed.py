"""Limits that stop guessing (log-ins, redemption codes) fail closed: with their Redis
unreachable, attempts are refused with a clear error and nothing changes. The per-token API
throttle fails open instead (tests/usage/test_spend_controls.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from redemption.models import Redemption
from tests.factories import UserFactory
from tests.helpers import ledger_state
from tests.redemption.conftest import make_batch
from tests.redis_server import free_port
from wallet.models import Wallet

pytestmark = pytest.mark.django_db


@pytest.fixture
def redis_gone(settings: Any) -> None:
    """The cache (where these counters live) points at a port nothing listens on."""
    settings.CACHES = {
        "default": {
            "BACKEND": "config.cache.SharedRedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "KEY_PREFIX": "gone",
        }
    }


def test_redeeming_is_refused_when_its_limit_cannot_be_checked(redis_gone: None) -> None:
    user = UserFactory()
    [code] = make_batch().codes
    before = ledger_state(Wallet.objects.get(user=user))
    client = Client()
    client.force_login(user)
    response = client.post("/api/v1/redemptions", {"code": code}, content_type="application/json")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "limiter_unavailable"
    page = client.post("/redeem/", {"code": code})
    assert page.status_code == 503
    assert "briefly unavailable" in page.content.decode()
    assert not Redemption.objects.exists()
    assert ledger_state(Wallet.objects.get(user=user)) == before


def test_logging_in_is_refused_when_its_limit_cannot_be_checked(redis_gone: None) -> None:
    user = UserFactory()  # password "correct-horse-battery"
    client = Client()
    response = client.post(
        "/accounts/login/", {"username": user.email, "password": "correct-horse-battery"}
    )
    assert response.status_code == 503
    assert "briefly unavailable" in response.content.decode()
    assert "_auth_user_id" not in client.session
