"""Moving the reward balance into the wallet: a referral lot, atomic across both ledgers,
once per idempotency key, never below the minimum or above the balance."""

from __future__ import annotations

from typing import Any

import pytest

from config.errors import IdempotencyConflict
from referrals import services
from referrals.errors import InsufficientRewardBalance, TransferBelowMinimum
from referrals.models import ReferralLedgerEntry
from tests.helpers import assert_ledger_ok, ledger_state, micro
from tests.referrals.conftest import account, invite
from wallet.errors import IdempotencyKeyRequired, WalletClosed
from wallet.models import CreditLot, LedgerEntry, Wallet

pytestmark = pytest.mark.django_db


@pytest.fixture
def earned(inviter, rule, pay):  # type: ignore[no-untyped-def]
    """The inviter has earned 30 credits (10% of a $300 top-up)."""
    pay(invite(inviter), "300")
    assert account(inviter).balance == micro("30")
    return inviter


def state(user) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    mine = account(user)
    return {
        "wallet": ledger_state(Wallet.objects.get(user=user)),
        "account": (mine.balance, mine.debt, mine.total_earned),
        "entries": ReferralLedgerEntry.objects.filter(account=mine).count(),
    }


def test_a_transfer_creates_a_referral_lot(earned) -> None:
    result = services.reward_transfer(user=earned, idempotency_key="k", amount_micro=micro("12"))
    assert not result.replayed
    wallet = Wallet.objects.get(user=earned)
    assert wallet.balance == micro("12")
    lot = CreditLot.objects.get(wallet=wallet)
    assert (lot.category, lot.amount, lot.expires_at) == ("referral", micro("12"), None)
    assert result.wallet_entry.kind == "referral_transfer"
    assert result.wallet_entry.lot_id == lot.pk
    assert (result.entry.kind, result.entry.amount, result.entry.balance_after) == (
        "transfer",
        -micro("12"),
        micro("18"),
    )
    assert result.entry.wallet_entry == result.wallet_entry
    # Total revenue is what was earned, not what is left.
    assert (account(earned).balance, account(earned).total_earned) == (micro("18"), micro("30"))
    services.reward_transfer(user=earned, idempotency_key="rest")  # everything left
    assert account(earned).balance == 0
    assert Wallet.objects.get(user=earned).balance == micro("30")
    assert_ledger_ok(wallet)


def test_transfer_twice_with_one_key_moves_once(earned) -> None:
    first = services.reward_transfer(user=earned, idempotency_key="same", amount_micro=micro("10"))
    again = services.reward_transfer(user=earned, idempotency_key="same", amount_micro=micro("10"))
    unspecified = services.reward_transfer(user=earned, idempotency_key="same")
    assert again.replayed and unspecified.replayed
    assert again.entry.pk == first.entry.pk == unspecified.entry.pk
    assert Wallet.objects.get(user=earned).balance == micro("10")
    assert account(earned).balance == micro("20")
    assert LedgerEntry.objects.filter(kind="referral_transfer").count() == 1
    before = state(earned)
    with pytest.raises(IdempotencyConflict):
        services.reward_transfer(user=earned, idempotency_key="same", amount_micro=micro("11"))
    assert state(earned) == before


@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        ({"amount_micro": micro("9.999999")}, TransferBelowMinimum, "transfer_below_minimum"),
        (
            {"amount_micro": micro("30.000001")},
            InsufficientRewardBalance,
            "insufficient_reward_balance",
        ),
        ({"idempotency_key": ""}, IdempotencyKeyRequired, "idempotency_key_required"),
        ({"idempotency_key": "x" * 121}, IdempotencyKeyRequired, "idempotency_key_required"),
    ],
)
def test_refused_transfers_change_nothing(earned, kwargs, error, code) -> None:
    kwargs.setdefault("idempotency_key", "k")
    before = state(earned)
    with pytest.raises(error) as refused:
        services.reward_transfer(user=earned, **kwargs)
    assert refused.value.code == code
    assert state(earned) == before


def test_a_balance_below_the_minimum_cannot_be_moved(inviter, rule, pay, settings) -> None:
    pay(invite(inviter), "50")  # 5 credits earned
    before = state(inviter)
    with pytest.raises(TransferBelowMinimum) as refused:
        services.reward_transfer(user=inviter, idempotency_key="k")
    assert refused.value.detail["minimum_micro"] == micro("10")
    assert state(inviter) == before
    settings.REFERRAL_MIN_TRANSFER = "5"
    services.reward_transfer(user=inviter, idempotency_key="k")
    assert Wallet.objects.get(user=inviter).balance == micro("5")


def test_nothing_to_transfer(user) -> None:
    with pytest.raises(TransferBelowMinimum):
        services.reward_transfer(user=user, idempotency_key="k")
    assert Wallet.objects.get(user=user).balance == 0


def test_a_closed_wallet_refuses_and_the_balance_stays(earned) -> None:
    from wallet import services as wallet_services

    wallet_services.wallet_set_status(wallet=Wallet.objects.get(user=earned), status="closed")
    before = state(earned)
    with pytest.raises(WalletClosed):
        services.reward_transfer(user=earned, idempotency_key="k")
    assert state(earned) == before
