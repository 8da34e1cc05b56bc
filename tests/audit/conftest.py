"""Staff console fixtures: a Support and a Finance member (groups from the migration), and
usage records charged through the metering services."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from accounts.models import ApiToken, User
from audit import permissions
from tests.factories import UserFactory
from tests.helpers import credit
from tests.usage.conftest import make_token, prices  # noqa: F401 (fixture)
from usage import pricing
from usage import services as usage_services
from usage.models import ModelPrice, UsageRecord
from wallet.models import Wallet
from wallet.verify import wallet_verify

_requests = itertools.count()


@pytest.fixture(autouse=True)
def _ledger_stays_clean(db: None) -> Iterator[None]:
    yield
    violations = wallet_verify()
    assert violations == [], "\n".join(map(str, violations))


def staff_member(group: str, **kwargs: Any) -> User:
    # Transactional tests elsewhere flush the tables the migration filled; put them back.
    if not Group.objects.filter(name=group).exists():
        permissions.groups_sync()
    user = UserFactory(is_staff=True, **kwargs)
    user.groups.add(Group.objects.get(name=group))
    return User.objects.get(pk=user.pk)  # fresh permission cache


@pytest.fixture
def support(db: None) -> User:
    return staff_member(permissions.SUPPORT)


@pytest.fixture
def finance(db: None) -> User:
    return staff_member(permissions.FINANCE)


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def support_client(support: User) -> Client:
    return logged_in(support)


@pytest.fixture
def finance_client(finance: User) -> Client:
    return logged_in(finance)


@pytest.fixture
def customer_wallet(user: User) -> Wallet:
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "50")
    return wallet


@pytest.fixture
def token(user: User, customer_wallet: Wallet, prices: dict[str, ModelPrice]) -> ApiToken:  # noqa: F811
    return make_token(user)[0]


def charge(
    token: ApiToken, *, input_tokens: int = 1_000_000, output_tokens: int = 0
) -> UsageRecord:
    """A finished request on test-chat ($2.50 per million input tokens, 1 credit = $1)."""
    report = usage_services.UsageReport(
        usage=pricing.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    )
    return usage_services.usage_record_create_oneshot(
        token=token, model="test-chat", report=report, request_id=f"req-{next(_requests)}"
    ).record
