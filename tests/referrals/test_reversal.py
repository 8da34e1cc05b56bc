"""A refunded top-up takes its reward back: from the reward balance, else from the referral
credits already moved to the wallet (never below zero), else as a debt that the next
rewards pay off first."""

from __future__ import annotations

import pytest

from billing import tasks
from referrals import services
from referrals.models import ReferralLedgerEntry
from tests.billing.conftest import deliver
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, micro
from tests.referrals.conftest import account, invite
from wallet import services as wallet_services
from wallet.models import CreditLot, LedgerEntry, Wallet

pytestmark = pytest.mark.django_db


def kinds(user) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    return list(
        ReferralLedgerEntry.objects.filter(account__user=user)
        .order_by("id")
        .values_list("kind", "amount")
    )


def position(user) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    mine = account(user)
    return mine.balance, mine.debt, mine.total_earned


def test_a_full_refund_before_the_transfer_reverses_from_the_balance(
    inviter, rule, pay, refund
) -> None:
    order = pay(invite(inviter), "100")
    assert position(inviter) == (micro("10"), 0, micro("10"))
    made = refund(order)
    assert made.status == "succeeded"
    assert kinds(inviter) == [("reward", micro("10")), ("reversal", -micro("10"))]
    reversal = ReferralLedgerEntry.objects.get(kind="reversal")
    assert (reversal.reference_type, reversal.reference_id) == ("billing.refund", str(made.pk))
    assert reversal.reverses.kind == "reward"
    assert position(inviter) == (0, 0, 0)
    assert Wallet.objects.get(user=inviter).balance == 0


def test_partial_refunds_reverse_in_proportion_and_add_up_to_the_reward(
    inviter, rule, pay, refund
) -> None:
    order = pay(invite(inviter), "100")
    refund(order, 2_500)  # $25 of $100
    assert position(inviter) == (micro("7.5"), 0, micro("7.5"))
    refund(order, 3_333)  # $58.33 refunded in all: 5.833 of the 10 reversed
    assert position(inviter)[0] == micro("4.167")
    refund(order)  # the rest
    assert position(inviter) == (0, 0, 0)
    assert sum(amount for kind, amount in kinds(inviter) if kind == "reversal") == -micro("10")


def test_the_followup_task_twice_reverses_once(inviter, rule, pay, refund) -> None:
    order = pay(invite(inviter), "100")
    made = refund(order, 5_000)
    tasks.topup_refunded_followups(order.pk, made.pk)
    tasks.topup_refunded_followups.delay(order.pk, made.pk)
    services.referral_reversal_for_refund(order_id=order.pk)
    assert kinds(inviter) == [("reward", micro("10")), ("reversal", -micro("5"))]


def test_after_the_transfer_the_reward_is_taken_back_from_the_wallet(
    inviter, rule, pay, refund
) -> None:
    order = pay(invite(inviter), "100")
    services.reward_transfer(user=inviter, idempotency_key="t1")
    wallet = Wallet.objects.get(user=inviter)
    assert wallet.balance == micro("10")
    refund(order)
    assert kinds(inviter) == [
        ("reward", micro("10")),
        ("transfer", -micro("10")),
        ("reversal", -micro("10")),
        ("recovery", micro("10")),
    ]
    assert position(inviter) == (0, 0, 0)
    wallet.refresh_from_db()
    assert wallet.balance == 0
    [lot] = CreditLot.objects.filter(wallet=wallet)
    assert (lot.category, lot.remaining) == ("referral", 0)
    taken = LedgerEntry.objects.get(wallet=wallet, kind="reversal")
    assert taken.amount == -micro("10") and taken.lot_id == lot.pk
    recovery = ReferralLedgerEntry.objects.get(kind="recovery")
    assert recovery.wallet_entry == taken
    assert_ledger_ok(wallet)


def test_what_was_spent_becomes_a_debt_that_the_next_rewards_pay_first(
    inviter, rule, pay, refund
) -> None:
    order = pay(invite(inviter), "100")
    services.reward_transfer(user=inviter, idempotency_key="t1")
    wallet = Wallet.objects.get(user=inviter)
    wallet_services.wallet_debit(
        wallet=wallet,
        amount=micro("6"),
        idempotency_key="spend",
        reference=wallet_services.Ref("test", "usage"),
    )
    refund(order)
    wallet.refresh_from_db()
    assert wallet.balance == 0  # the 4 left were taken back; never below zero
    assert position(inviter) == (0, micro("6"), 0)
    assert kinds(inviter)[-2:] == [("reversal", -micro("10")), ("recovery", micro("4"))]
    # Rewards earned later pay the debt first.
    pay(invite(inviter), "40")
    assert position(inviter) == (0, micro("2"), micro("4"))
    pay(invite(inviter), "100")
    assert position(inviter) == (micro("8"), 0, micro("14"))
    assert_ledger_ok(wallet)


def test_reserved_credits_are_not_taken_back(inviter, rule, pay, refund) -> None:
    order = pay(invite(inviter), "100")
    services.reward_transfer(user=inviter, idempotency_key="t1")
    wallet = Wallet.objects.get(user=inviter)
    wallet_services.hold_create(wallet=wallet, amount=micro("7"), request_id="in-flight")
    refund(order)
    wallet.refresh_from_db()
    assert (wallet.balance, wallet.held) == (micro("7"), micro("7"))
    assert position(inviter) == (0, micro("7"), 0)
    assert_ledger_ok(wallet)


def test_a_refund_before_the_reward_task_ran_pays_no_reward(inviter, rule, refund, fake_stripe):  # type: ignore[no-untyped-def]
    from tests.billing.conftest import complete, new_order

    order = complete(fake_stripe, new_order(invite(inviter), "100"))  # follow-ups not run yet
    refund(order)
    tasks.topup_completed_followups(order.pk)  # the late reward task
    assert kinds(inviter) == []


def test_a_late_reward_task_after_a_partial_refund_pays_the_reduced_reward(
    inviter, rule, refund, fake_stripe
) -> None:
    from tests.billing.conftest import complete, new_order

    order = complete(fake_stripe, new_order(invite(inviter), "100"))
    refund(order, 4_000)  # the reversal task finds no reward yet
    tasks.topup_completed_followups(order.pk)
    assert kinds(inviter) == [("reward", micro("10")), ("reversal", -micro("4"))]
    assert position(inviter) == (micro("6"), 0, micro("6"))


def test_a_refund_made_in_the_stripe_dashboard_reverses_too(
    inviter, rule, pay, fake_stripe, django_capture_on_commit_callbacks
) -> None:
    order = pay(invite(inviter), "100")
    event = fake_stripe.refund_in_dashboard(order.provider_payment_id, 10_000)
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver(event).status_code == 200
    assert position(inviter) == (0, 0, 0)


def test_reversal_of_one_inviter_leaves_others_alone(inviter, rule, pay, refund) -> None:
    other = UserFactory()
    order = pay(invite(inviter), "100")
    pay(invite(other), "100")
    refund(order)
    assert position(other) == (micro("10"), 0, micro("10"))
