"""Rewards are paid on completed top-ups of invited accounts (through billing's follow-up
task), never on pending, failed or cancelled ones, and once."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import tasks
from billing.models import TopUpOrder
from referrals import services
from referrals.models import Referral, ReferralLedgerEntry, RewardRule
from tests.billing.conftest import deliver, new_order
from tests.factories import UserFactory
from tests.helpers import micro
from tests.referrals.conftest import account, invite, make_rule

pytestmark = pytest.mark.django_db


def rewards() -> list[int]:
    return list(
        ReferralLedgerEntry.objects.filter(kind="reward")
        .order_by("id")
        .values_list("amount", flat=True)
    )


def test_a_completed_topup_pays_the_inviter_a_percentage_of_its_paid_credits(
    inviter, rule, pay
) -> None:
    invitee = invite(inviter)
    order = pay(invitee, "100")  # 100 paid credits + 3 bonus
    assert order.status == "completed"
    [entry] = ReferralLedgerEntry.objects.all()
    assert (entry.kind, entry.amount, entry.balance_after, entry.debt_after) == (
        "reward",
        micro("10"),
        micro("10"),
        0,
    )
    assert (entry.reference_type, entry.reference_id) == ("billing.topuporder", str(order.pk))
    assert (entry.rule, entry.referral) == (rule, Referral.objects.get(invitee=invitee))
    mine = account(inviter)
    assert (mine.balance, mine.total_earned, mine.debt) == (micro("10"), micro("10"), 0)


def test_percentages_are_exact_to_the_micro_credit(inviter, pay) -> None:
    make_rule(percent=Decimal("3.333"))
    invitee = invite(inviter)
    pay(invitee, "77.77")  # 77.77 credits x 3.333% = 2.5920741 -> 2.592075 (rounded up)
    assert rewards() == [2_592_075]


def test_no_reward_for_pending_failed_or_cancelled_topups(inviter, rule, fake_stripe) -> None:
    invitee = invite(inviter)
    pending = new_order(invitee, "50")
    declined = new_order(invitee, "60")
    deliver(fake_stripe.decline(declined.provider_session_id))
    expired = new_order(invitee, "70")
    deliver(fake_stripe.expire(expired.provider_session_id))
    statuses = dict(TopUpOrder.objects.values_list("pk", "status"))
    assert [statuses[o.pk] for o in (pending, declined, expired)] == [
        "pending",
        "failed",
        "cancelled",
    ]
    for order in (pending, declined, expired):
        tasks.topup_completed_followups.delay(order.pk)  # a stray run changes nothing
        assert services.referral_reward_for_order(order_id=order.pk) is None
    assert not ReferralLedgerEntry.objects.exists()
    assert services.referral_account_get_or_create(user=inviter).balance == 0


def test_no_reward_without_an_invitation_or_an_active_rule(inviter, pay) -> None:
    make_rule()
    pay(UserFactory(), "100")  # not invited
    services.reward_rule_activate(rule=None)
    pay(invite(inviter), "100")  # invited, but no rule is active
    assert not ReferralLedgerEntry.objects.exists()


def test_first_topup_only(inviter, rule, pay) -> None:
    invitee = invite(inviter)
    pay(invitee, "50")
    pay(invitee, "200")
    assert rewards() == [micro("5")]


def test_all_topups_within_the_window(inviter, pay) -> None:
    make_rule(basis=RewardRule.Basis.PERCENT_WINDOW, percent=Decimal(5), window_days=30)
    invitee = invite(inviter)
    pay(invitee, "100")
    pay(invitee, "40")
    Referral.objects.filter(invitee=invitee).update(
        created_at=timezone.now() - dt.timedelta(days=31)
    )
    pay(invitee, "100")  # outside the 30 days
    assert rewards() == [micro("5"), micro("2")]
    assert account(inviter).balance == micro("7")


def test_fixed_amount_on_the_first_paid_topup(inviter, pay) -> None:
    make_rule(basis=RewardRule.Basis.FIXED_FIRST, fixed_micro=micro("4"))
    invitee = invite(inviter)
    pay(invitee, "5")
    pay(invitee, "500")
    assert rewards() == [micro("4")]


def test_a_bank_transfer_topup_rewards_too(inviter, rule, superuser_confirm) -> None:
    from billing import services as billing_services

    invitee = invite(inviter)
    order = billing_services.topup_order_create(
        user=invitee, amount="20", payment_method=TopUpOrder.PaymentMethod.BANK_TRANSFER
    )
    superuser_confirm(order)
    assert rewards() == [micro("2")]


def test_the_followup_task_twice_rewards_once(inviter, rule, pay) -> None:
    invitee = invite(inviter)
    order = pay(invitee, "100")
    tasks.topup_completed_followups.delay(order.pk)
    tasks.topup_completed_followups(order.pk)
    assert rewards() == [micro("10")]
    assert account(inviter).balance == micro("10")


def test_each_inviter_is_rewarded_for_their_own_invitees(inviter, rule, pay) -> None:
    other = UserFactory()
    pay(invite(inviter), "100")
    pay(invite(other), "300")
    pay(invite(inviter), "20")
    assert account(inviter).balance == micro("12")
    assert account(other).balance == micro("30")
    assert services.referral_account_get_or_create(user=UserFactory()).balance == 0


def test_a_rule_switch_never_rewards_an_order_twice(inviter, pay) -> None:
    make_rule()
    invitee = invite(inviter)
    order = pay(invitee, "100")
    window = RewardRule.objects.create(
        name="window", basis=RewardRule.Basis.PERCENT_WINDOW, percent=Decimal(50), window_days=9
    )
    services.reward_rule_activate(rule=window)
    tasks.topup_completed_followups(order.pk)  # a late retry under the new rule
    assert rewards() == [micro("10")]


@pytest.fixture
def superuser_confirm(django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    from billing import services as billing_services

    staff = UserFactory(is_staff=True, is_superuser=True)

    def confirm(order: TopUpOrder) -> TopUpOrder:
        with django_capture_on_commit_callbacks(execute=True):
            return billing_services.order_confirm_manual_payment(order=order, actor=staff)

    return confirm
