"""Real threads, real transactions: rewards, reversals, transfers and referrals under races."""

from __future__ import annotations

import pytest

from referrals import services
from referrals.errors import AlreadyReferred, InsufficientRewardBalance, TransferBelowMinimum
from referrals.models import Referral, ReferralLedgerEntry
from tests.billing.conftest import complete, new_order
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, micro
from tests.referrals.conftest import account, invite, make_rule
from tests.wallet.test_concurrency import run_together
from wallet.models import LedgerEntry, Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def rich_inviter(fake_stripe):  # type: ignore[no-untyped-def]
    """An inviter with 30 credits of rewards (the follow-up tasks run eagerly on commit)."""
    make_rule()
    inviter = UserFactory()
    complete(fake_stripe, new_order(invite(inviter), "300"))
    assert account(inviter).balance == micro("30")
    return inviter


def test_ten_threads_rewarding_one_order_reward_once(fake_stripe) -> None:
    make_rule()
    inviter = UserFactory()
    invitee = invite(inviter)
    order = complete(fake_stripe, new_order(invitee, "100"))  # rewarded once already
    results = run_together(10, lambda i: services.referral_reward_for_order(order_id=order.pk))
    assert all(not isinstance(r, Exception) for r in results), results
    assert ReferralLedgerEntry.objects.filter(kind="reward").count() == 1
    assert account(inviter).balance == micro("10")


def test_ten_threads_transferring_with_one_key_move_once(rich_inviter) -> None:
    results = run_together(
        10,
        lambda i: services.reward_transfer(
            user=rich_inviter, idempotency_key="one", amount_micro=micro("10")
        ),
    )
    assert all(not isinstance(r, Exception) for r in results), results
    assert sum(1 for r in results if not r.replayed) == 1
    assert Wallet.objects.get(user=rich_inviter).balance == micro("10")
    assert account(rich_inviter).balance == micro("20")
    assert_ledger_ok()


def test_ten_threads_with_their_own_keys_move_only_what_there_is(rich_inviter) -> None:
    results = run_together(
        10,
        lambda i: services.reward_transfer(
            user=rich_inviter, idempotency_key=f"k{i}", amount_micro=micro("10")
        ),
    )
    moved = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, InsufficientRewardBalance)]
    assert (len(moved), len(refused)) == (3, 7), results
    assert Wallet.objects.get(user=rich_inviter).balance == micro("30")
    assert account(rich_inviter).balance == 0
    assert LedgerEntry.objects.filter(kind="referral_transfer").count() == 3
    with pytest.raises(TransferBelowMinimum):
        services.reward_transfer(user=rich_inviter, idempotency_key="late")
    assert_ledger_ok()


def test_one_invitee_signing_up_through_five_codes_at_once_is_referred_once() -> None:
    inviters = [UserFactory() for _ in range(5)]
    codes = [services.referral_account_get_or_create(user=u).code for u in inviters]
    invitee = UserFactory()
    results = run_together(
        5, lambda i: services.referral_record_signup(invitee=invitee, invite_code=codes[i])
    )
    assert sum(1 for r in results if isinstance(r, Referral)) == 1
    assert sum(1 for r in results if isinstance(r, AlreadyReferred)) == 4
    assert Referral.objects.filter(invitee=invitee).count() == 1
