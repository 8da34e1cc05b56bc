"""Referral tests drive real top-up orders through billing's services and its fake Stripe
(the fixtures are billing's own, imported here), with the after-commit follow-up tasks run
as they would be after a real commit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from accounts.models import User
from billing import services as billing_services
from billing.models import Refund, TopUpOrder
from referrals import services
from referrals.models import Referral, ReferralAccount, RewardRule
from referrals.verify import referral_verify
from tests.billing import conftest as billing_fixtures
from tests.billing.conftest import complete, new_order
from tests.billing.fake_stripe import FakeStripe
from tests.factories import UserFactory

# Billing's own fixtures, shared rather than copied: its catalogue, its fake Stripe server and
# its refund staff member, and its check that every ledger ends clean.
_catalogue = billing_fixtures._catalogue
_ledger_stays_clean = billing_fixtures._ledger_stays_clean
_stripe_server = billing_fixtures._stripe_server
fake_stripe = billing_fixtures.fake_stripe
refund_staff = billing_fixtures.refund_staff


@pytest.fixture(autouse=True)
def _reward_ledger_stays_clean(_catalogue: None) -> Iterator[None]:
    """Every referral test ends with every reward account passing every invariant."""
    yield
    problems = referral_verify()
    assert problems == [], "\n".join(problems)


def make_rule(**kwargs: Any) -> RewardRule:
    kwargs.setdefault("name", "10% of the first top-up")
    kwargs.setdefault("basis", RewardRule.Basis.PERCENT_FIRST)
    if kwargs["basis"] != RewardRule.Basis.FIXED_FIRST:
        kwargs.setdefault("percent", Decimal(10))
    rule = RewardRule.objects.create(**kwargs)
    services.reward_rule_activate(rule=rule)
    return rule


@pytest.fixture
def rule(db: None) -> RewardRule:
    return make_rule()


def invite(inviter: User, **kwargs: Any) -> User:
    """A new account signed up through ``inviter``'s code."""
    invitee = UserFactory(**kwargs)
    code = services.referral_account_get_or_create(user=inviter).code
    services.referral_record_signup(invitee=invitee, invite_code=code)
    return invitee


def account(user: User) -> ReferralAccount:
    return ReferralAccount.objects.get(user=user)


@pytest.fixture
def inviter(db: None) -> User:
    return UserFactory(email="inviter@example.com")


@pytest.fixture
def pay(
    fake_stripe: FakeStripe, django_capture_on_commit_callbacks: Any
) -> Callable[..., TopUpOrder]:
    """The invitee pays a top-up through Stripe; the follow-ups run after the commit."""

    def pay(user: User, amount: str = "100") -> TopUpOrder:
        order = new_order(user, amount)
        with django_capture_on_commit_callbacks(execute=True):
            return complete(fake_stripe, order)

    return pay


@pytest.fixture
def refund(refund_staff: User, django_capture_on_commit_callbacks: Any) -> Callable[..., Refund]:
    """Staff refund (part of) an order through the refund service; follow-ups run."""
    keys = iter(range(1_000_000))

    def refund(order: TopUpOrder, amount_minor: int | None = None) -> Refund:
        with django_capture_on_commit_callbacks(execute=True):
            return billing_services.refund_create(
                order=TopUpOrder.objects.get(pk=order.pk),
                amount_minor=amount_minor,
                idempotency_key=f"refund-{next(keys)}",
                actor=refund_staff,
                reason="Customer asked",
            )

    return refund


def referral_of(invitee: User) -> Referral:
    return Referral.objects.get(invitee=invitee)
