"""Webhooks delivered concurrently, with reconciliation racing them: credits exactly once.
Real threads, real transactions, the real endpoint."""

from __future__ import annotations

import pytest

from billing import services
from billing.models import TopUpOrder, WebhookEvent
from tests.billing.conftest import deliver, new_order
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, micro
from tests.wallet.test_concurrency import run_together
from wallet.models import LedgerEntry, Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_ten_threads_delivering_the_same_completed_event_grant_once(fake_stripe) -> None:
    user = UserFactory()
    order = new_order(user, "500")
    event = fake_stripe.pay(order.provider_session_id)
    responses = run_together(10, lambda i: deliver(event))
    assert all(not isinstance(r, Exception) for r in responses), responses
    assert [r.status_code for r in responses] == [200] * 10
    assert sum(1 for r in responses if not r.json()["duplicate"]) == 1
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == micro("520")
    assert LedgerEntry.objects.filter(wallet=wallet).count() == 2
    assert WebhookEvent.objects.get().status == "processed"
    assert TopUpOrder.objects.get().status == "completed"
    assert_ledger_ok(wallet)


def test_different_events_and_reconciliation_racing_for_one_payment_grant_once(
    fake_stripe,
) -> None:
    user = UserFactory()
    order = new_order(user, "100")
    completed = fake_stripe.pay(order.provider_session_id)
    succeeded = fake_stripe.event(
        "checkout.session.async_payment_succeeded", completed["data"]["object"]
    )
    resent = dict(completed, id="evt_same_payment_other_id")

    def work(i: int) -> object:
        if i % 4 == 0:
            return services.order_sync(order=TopUpOrder.objects.get(pk=order.pk)).status
        return deliver([completed, succeeded, resent][i % 3]).status_code

    results = run_together(12, work)
    assert all(not isinstance(r, Exception) for r in results), results
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == micro("103")
    assert LedgerEntry.objects.filter(wallet=wallet).count() == 2
    assert set(WebhookEvent.objects.values_list("status", flat=True)) <= {"processed", "ignored"}
    assert_ledger_ok(wallet)


def test_concurrent_creates_with_one_idempotency_key_make_one_order(fake_stripe) -> None:
    user = UserFactory()
    results = run_together(
        8, lambda i: services.topup_order_create(user=user, amount="25", client_key="once").pk
    )
    order_ids = {r for r in results if isinstance(r, int)}
    assert len(order_ids) == 1, results
    assert TopUpOrder.objects.count() == 1
    assert len(fake_stripe.sessions) == 1
