"""The hourly sweep pays what the top-up follow-ups missed (the broker was down when they
were enqueued, or their retries ran out): here the follow-ups are never run at all."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from billing import services as billing_services
from billing.models import TopUpOrder
from referrals import services, tasks
from referrals.models import ReferralLedgerEntry
from tests.billing.conftest import complete, new_order
from tests.helpers import micro
from tests.referrals.conftest import account, invite

pytestmark = pytest.mark.django_db


def kinds() -> list[tuple[str, int]]:
    return list(ReferralLedgerEntry.objects.order_by("id").values_list("kind", "amount"))


def test_a_reward_whose_followup_never_ran_is_paid_once_by_the_sweep(
    inviter, rule, fake_stripe
) -> None:
    invitee = invite(inviter)
    complete(fake_stripe, new_order(invitee, "100"))  # no on-commit follow-ups run
    assert kinds() == []
    assert tasks.reconcile_referral_rewards() == 1
    assert kinds() == [("reward", micro("10"))]
    tasks.reconcile_referral_rewards()
    assert kinds() == [("reward", micro("10"))]
    assert account(inviter).balance == micro("10")


def test_a_missed_reversal_is_applied_by_the_sweep(
    inviter, rule, fake_stripe, refund_staff
) -> None:
    invitee = invite(inviter)
    order = complete(fake_stripe, new_order(invitee, "100"))
    services.referral_rewards_reconcile(since=timezone.now() - dt.timedelta(hours=1))
    billing_services.refund_create(
        order=TopUpOrder.objects.get(pk=order.pk),
        amount_minor=5000,
        idempotency_key="half",
        actor=refund_staff,
        reason="Customer asked",
    )  # the refund's follow-up never runs
    assert kinds() == [("reward", micro("10"))]
    call_command("reconcile_referral_rewards", "--days", "1", stdout=StringIO())
    assert kinds() == [("reward", micro("10")), ("reversal", -micro("5"))]
    call_command("reconcile_referral_rewards", stdout=StringIO())
    assert account(inviter).balance == micro("5")


def test_the_sweep_ignores_top_ups_of_accounts_nobody_invited_and_old_ones(
    user, rule, fake_stripe
) -> None:
    complete(fake_stripe, new_order(user, "100"))
    assert services.referral_rewards_reconcile(since=timezone.now() - dt.timedelta(days=1)) == 0
    assert services.referral_rewards_reconcile(since=timezone.now() + dt.timedelta(seconds=1)) == 0
    assert kinds() == []
