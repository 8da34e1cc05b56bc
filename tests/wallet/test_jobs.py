"""The ledger's scheduled jobs: each run twice has the effect of once."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command
from django.utils import timezone

from tests.helpers import assert_ledger_ok, credit, micro, refresh
from wallet import services, tasks
from wallet.models import Hold, LedgerEntry

pytestmark = pytest.mark.django_db


def test_the_hold_expiry_job_run_twice_expires_once(wallet) -> None:
    credit(wallet, "10")
    past = timezone.now() - dt.timedelta(hours=1)
    hold = services.hold_create(
        wallet=wallet,
        amount=micro("4"),
        request_id="r1",
        now=past - dt.timedelta(minutes=1),
        expires_at=past,
    )
    services.hold_create(wallet=wallet, amount=micro("1"), request_id="r2")  # still live
    assert tasks.holds_expire.delay().get() == 1
    assert tasks.holds_expire.delay().get() == 0
    assert Hold.objects.get(pk=hold.pk).status == "expired"
    assert refresh(wallet).held == micro("1")
    assert_ledger_ok(wallet)


def test_the_lot_expiry_job_run_twice_expires_once(wallet) -> None:
    soon = timezone.now() + dt.timedelta(seconds=1)
    credit(wallet, "5", "promotional", expires_at=soon)
    credit(wallet, "7")
    later = soon + dt.timedelta(seconds=1)
    assert services.lots_expire(now=later) == 1
    assert services.lots_expire(now=later) == 0
    (entry,) = LedgerEntry.objects.filter(kind="expiry")
    assert entry.amount == -micro("5")
    assert refresh(wallet).balance == micro("7")
    assert_ledger_ok(wallet)


def test_the_commands_run_the_jobs(wallet, capsys) -> None:
    call_command("expire_holds")
    call_command("expire_lots")
    out = capsys.readouterr().out
    assert "expired 0 hold(s)" in out and "expired 0 lot(s)" in out


def test_every_job_has_a_beat_entry_and_a_time_limit(settings) -> None:
    from celery import current_app

    import alerts.tasks
    import billing.tasks

    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    jobs = {
        "wallet.tasks.holds_expire": tasks.holds_expire,
        "wallet.tasks.lots_expire": tasks.lots_expire,
        "alerts.tasks.low_balance_sweep": alerts.tasks.low_balance_sweep,
        "alerts.tasks.organization_spend_sweep": alerts.tasks.organization_spend_sweep,
        "billing.tasks.recurring_grants": billing.tasks.recurring_grants,
        "billing.tasks.reconcile_payments": billing.tasks.reconcile_payments,
    }
    for name, task in jobs.items():
        assert name in scheduled, name
        assert name in current_app.tasks
        assert task.time_limit and task.soft_time_limit and task.acks_late, name
