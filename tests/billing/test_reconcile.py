"""Reconciliation: what webhooks missed is settled by asking Stripe."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from billing import services, tasks
from billing.models import TopUpOrder, WebhookEvent
from tests.billing.conftest import deliver, new_order
from tests.helpers import assert_ledger_ok, micro
from wallet.models import Wallet

pytestmark = pytest.mark.django_db


def age(order: TopUpOrder, minutes: int = 30) -> TopUpOrder:
    TopUpOrder.objects.filter(pk=order.pk).update(
        created_at=timezone.now() - dt.timedelta(minutes=minutes)
    )
    return TopUpOrder.objects.get(pk=order.pk)


def test_reconciliation_completes_an_order_whose_webhook_never_arrived(user, fake_stripe) -> None:
    order = age(new_order(user, "100"))
    completed = fake_stripe.pay(order.provider_session_id)  # ...and the webhook is lost
    report = services.payments_reconcile()
    assert (report.checked, report.completed) == (1, 1)
    order.refresh_from_db()
    assert order.status == "completed"
    assert order.provider_payment_id == completed["data"]["object"]["payment_intent"]
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == micro("103")
    # The webhook turns up after all: nothing more is granted.
    assert deliver(completed).json()["status"] == "ignored"
    assert services.payments_reconcile().checked == 0
    assert Wallet.objects.get(user=user).balance == micro("103")
    assert_ledger_ok(wallet)


def test_reconciliation_cancels_an_expired_checkout(user, fake_stripe) -> None:
    order = age(new_order(user, "100"))
    fake_stripe.expire(order.provider_session_id)
    report = services.payments_reconcile()
    assert report.cancelled == 1
    order.refresh_from_db()
    assert order.status == "cancelled"
    assert Wallet.objects.get(user=user).balance == 0


def test_reconciliation_leaves_open_and_recent_orders_alone(user, fake_stripe) -> None:
    older = age(new_order(user, "100"))
    new_order(user, "20")  # too recent to ask about
    report = services.payments_reconcile()
    assert (report.checked, report.unchanged) == (1, 1)
    assert fake_stripe.calls("GET", "/v1/checkout/sessions/") == [{}]
    older.refresh_from_db()
    assert older.status == "pending"


def test_an_open_checkout_past_its_expiry_is_closed(user, fake_stripe) -> None:
    order = age(new_order(user, "100"), minutes=120)
    TopUpOrder.objects.filter(pk=order.pk).update(
        checkout_expires_at=timezone.now() - dt.timedelta(minutes=30)
    )
    services.payments_reconcile()
    order.refresh_from_db()
    assert order.status == "cancelled"
    assert fake_stripe.sessions[order.provider_session_id]["status"] == "expired"


def test_an_order_whose_checkout_never_opened_is_cancelled(user, fake_stripe) -> None:
    fake_stripe.fail_next("POST", "/v1/checkout/sessions", status=500)
    with pytest.raises(Exception, match="not reachable"):
        new_order(user, "100")
    order = age(TopUpOrder.objects.get())
    report = services.payments_reconcile()
    assert report.cancelled == 1
    order.refresh_from_db()
    assert order.status == "cancelled"
    assert "could not be opened" in order.failure_reason


def test_a_stripe_outage_during_reconciliation_changes_nothing_and_is_reported(
    user, fake_stripe
) -> None:
    first = age(new_order(user, "100"), minutes=40)
    second = age(new_order(user, "20"))
    fake_stripe.pay(first.provider_session_id)
    fake_stripe.pay(second.provider_session_id)
    fake_stripe.fail_next("GET", f"/v1/checkout/sessions/{first.provider_session_id}", status=500)
    report = services.payments_reconcile()
    assert (report.errors, report.completed) == (1, 1)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == ("pending", "completed")
    assert services.payments_reconcile().completed == 1  # the next run catches up


def test_unpaid_manual_orders_are_cancelled_after_their_ttl(user, settings) -> None:
    order = new_order(user, "100", payment_method="bank_transfer")
    age(order, minutes=60 * 24 * (settings.BILLING_MANUAL_ORDER_TTL_DAYS - 1))
    assert services.payments_reconcile().cancelled == 0
    age(order, minutes=60 * 24 * settings.BILLING_MANUAL_ORDER_TTL_DAYS + 1)
    assert services.payments_reconcile().cancelled == 1
    order.refresh_from_db()
    assert order.status == "cancelled"


def test_failed_webhook_events_are_processed_again(user, fake_stripe) -> None:
    order = new_order(user, "100")
    completed = fake_stripe.pay(order.provider_session_id)
    # A refund made in the dashboard reaches us before the payment did.
    payment = completed["data"]["object"]["payment_intent"]
    refunded = fake_stripe.refund_in_dashboard(payment, 10_000)
    early = deliver(refunded)
    assert early.status_code == 500  # Stripe will retry it
    event = WebhookEvent.objects.get(event_id=refunded["id"])
    assert event.status == "failed"
    assert event.error.startswith("OrderNotReady: A refund was reported before the payment")
    deliver(completed)
    report = services.payments_reconcile()
    assert report.events_retried == 1
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("processed", 2)
    order.refresh_from_db()
    assert order.status == "refunded"
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == 0
    assert_ledger_ok(wallet)


def test_the_time_budget_stops_a_run_early(user, fake_stripe) -> None:
    age(new_order(user, "100"))
    report = services.payments_reconcile(time_budget_seconds=-1)
    assert report.stopped_early and report.checked == 0


def test_reconcile_payments_command(user, fake_stripe) -> None:
    order = new_order(user, "100")
    fake_stripe.pay(order.provider_session_id)
    out = StringIO()
    call_command("reconcile_payments", "--older-than", "0", stdout=out)
    assert f"{order.order_no}: pending -> completed" in out.getvalue()
    assert "1 completed" in out.getvalue()
    assert Wallet.objects.get(user=user).balance == micro("103")


def test_the_task_is_scheduled_every_five_minutes_and_runs(user, fake_stripe) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["billing-reconcile-payments"]
    assert entry == {"task": "billing.tasks.reconcile_payments", "schedule": 300.0}
    assert tasks.reconcile_payments.name == entry["task"]
    order = new_order(user, "100")
    fake_stripe.pay(order.provider_session_id)
    summary = tasks.reconcile_payments.delay(older_than_minutes=0).get()
    assert "1 completed" in summary
    assert tasks.reconcile_payments.soft_time_limit and tasks.reconcile_payments.time_limit
