"""Recurring plan grants: once per calendar month, included lots expiring at the month's
end, the rollover cap, and the task run twice having the effect of once."""

from __future__ import annotations

import datetime as dt

import pytest

from billing import services, tasks
from billing.models import RecurringGrant
from tests.helpers import assert_ledger_ok, key, micro, refresh
from wallet import services as wallet_services
from wallet.models import CreditLot, LedgerEntry

pytestmark = pytest.mark.django_db

JAN_15 = dt.datetime(2031, 1, 15, 10, tzinfo=dt.UTC)
FEB_1 = dt.datetime(2031, 2, 1, tzinfo=dt.UTC)
MAR_1 = dt.datetime(2031, 3, 1, tzinfo=dt.UTC)


@pytest.fixture
def plan(wallet) -> RecurringGrant:
    return RecurringGrant.objects.create(
        name="Team plan",
        wallet=wallet,
        credits_per_month_micro=micro("100"),
        rollover_cap_micro=micro("30"),
        starts_on=dt.date(2031, 1, 1),
    )


def test_a_month_is_granted_once_as_an_included_lot_expiring_at_its_end(plan, wallet) -> None:
    assert services.recurring_grants_run(now=JAN_15) == 1
    assert services.recurring_grants_run(now=JAN_15 + dt.timedelta(hours=1)) == 0
    (lot,) = CreditLot.objects.filter(wallet=wallet)
    assert (lot.category, lot.amount, lot.expires_at) == ("included", micro("100"), FEB_1)
    entry = LedgerEntry.objects.get(lot=lot)
    assert entry.kind == "grant" and entry.idempotency_key == f"recurring-grant:{plan.pk}:2031-01"
    assert_ledger_ok(wallet, now=JAN_15)


def test_unused_credits_roll_over_up_to_the_cap(plan, wallet) -> None:
    services.recurring_grants_run(now=JAN_15)
    wallet_services.wallet_debit(
        wallet=wallet,
        amount=micro("40"),
        idempotency_key=key(),
        reference=wallet_services.Ref("test", "use"),
        now=JAN_15,
    )
    feb_2 = FEB_1 + dt.timedelta(days=1)
    assert services.recurring_grants_run(now=feb_2) == 1
    assert services.recurring_grants_run(now=feb_2) == 0
    expiry = LedgerEntry.objects.get(kind="expiry")
    assert expiry.amount == -micro("60")
    lots = CreditLot.objects.filter(wallet=wallet, has_credits=True).order_by("id")
    assert [(lot.amount, lot.expires_at) for lot in lots] == [
        (micro("100"), MAR_1),
        (micro("30"), MAR_1),  # 60 unused, capped at 30
    ]
    assert refresh(wallet).balance == micro("130")
    assert_ledger_ok(wallet, now=feb_2)


def test_no_grant_before_the_start_after_the_end_or_when_inactive(plan, wallet) -> None:
    assert services.recurring_grants_run(now=JAN_15 - dt.timedelta(days=30)) == 0
    plan.ends_on = dt.date(2030, 12, 31)
    plan.save()
    assert services.recurring_grants_run(now=JAN_15) == 0
    plan.ends_on = None
    plan.is_active = False
    plan.save()
    assert services.recurring_grants_run(now=JAN_15) == 0
    assert refresh(wallet).balance == 0


def test_the_task_run_twice_grants_once(wallet) -> None:
    RecurringGrant.objects.create(name="Now", wallet=wallet, credits_per_month_micro=micro("5"))
    assert tasks.recurring_grants.delay().get() == 1
    assert tasks.recurring_grants.delay().get() == 0
    assert refresh(wallet).balance == micro("5")
    assert_ledger_ok(wallet)


def test_staff_set_up_a_grant_in_credits_in_the_admin(wallet) -> None:
    from tests.billing.conftest import api
    from tests.factories import UserFactory

    client = api(UserFactory(is_staff=True, is_superuser=True))
    response = client.post(
        "/admin/billing/recurringgrant/add/",
        {
            "name": "Pro plan",
            "wallet": wallet.pk,
            "credits_per_month": "250.5",
            "rollover_cap": "50",
            "starts_on": "2031-01-01",
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.content[:3000]
    grant = RecurringGrant.objects.get()
    assert grant.credits_per_month_micro == micro("250.5")
    assert grant.rollover_cap_micro == micro("50")
    assert client.get(f"/admin/billing/recurringgrant/{grant.pk}/change/").status_code == 200
