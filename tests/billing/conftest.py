"""Billing tests talk to a fake Stripe on 127.0.0.1 through the official library, and post
webhooks to the real endpoint signed the way Stripe signs them."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import User
from billing import services
from billing.models import TopUpOrder
from tests.billing.fake_stripe import FakeStripe, sign
from tests.factories import UserFactory
from wallet.verify import wallet_verify

WEBHOOK_SECRET = "whsec_test_0123456789abcdef"
WEBHOOK_URL = "/billing/webhooks/stripe/"


@pytest.fixture(autouse=True)
def _catalogue(db: None) -> None:
    """The default packages and bonus rules of the data migration. Transactional tests
    flush every table, so they are put back (idempotently) for each test."""
    migration = importlib.import_module("billing.migrations.0002_default_packages_and_bonus_rules")
    migration.create_defaults(django_apps, None)


@pytest.fixture(autouse=True)
def _ledger_stays_clean(_catalogue: None) -> Iterator[None]:
    """Every billing test ends with every wallet passing every ledger invariant."""
    yield
    violations = wallet_verify()
    assert violations == [], "\n".join(map(str, violations))


@pytest.fixture(scope="session")
def _stripe_server() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def fake_stripe(_stripe_server: FakeStripe, settings: Any) -> FakeStripe:
    _stripe_server.reset()
    settings.STRIPE_SECRET_KEY = _stripe_server.api_key
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = _stripe_server.url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    settings.SITE_URL = "https://credits.test"
    return _stripe_server


def deliver(
    event: dict[str, Any] | None = None,
    *,
    body: str | None = None,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
    signature: str | None = None,
) -> Any:
    """POST an event to our endpoint as Stripe would (a fresh client: safe in threads)."""
    payload = body if body is not None else json.dumps(event)
    header = signature if signature is not None else sign(payload, secret, timestamp)
    return Client().post(
        WEBHOOK_URL, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
    )


def api(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def grant(user: User, *codenames: str) -> User:
    for codename in codenames:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="billing", codename=codename)
        )
    return User.objects.get(pk=user.pk)  # fresh permission cache


@pytest.fixture
def refund_staff(db: None) -> User:
    return grant(UserFactory(is_staff=True), "refund_topuporder")


@pytest.fixture
def confirm_staff(db: None) -> User:
    return grant(UserFactory(is_staff=True), "confirm_topuporder")


def new_order(user: User, amount: str = "100", **kwargs: Any) -> TopUpOrder:
    return services.topup_order_create(user=user, amount=amount, **kwargs)


def complete(fake: FakeStripe, order: TopUpOrder) -> TopUpOrder:
    """The customer pays and Stripe's completed event reaches us."""
    assert order.provider_session_id
    response = deliver(fake.pay(order.provider_session_id))
    assert response.status_code == 200, response.content
    return TopUpOrder.objects.get(pk=order.pk)


def stripe_session(fake: FakeStripe, order: TopUpOrder) -> dict[str, Any]:
    return fake.sessions[order.provider_session_id or ""]
