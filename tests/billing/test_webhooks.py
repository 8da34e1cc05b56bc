"""The Stripe webhook endpoint: signatures, storage, every handled event, bad events."""

from __future__ import annotations

import json
import time

import pytest

from billing.models import TopUpOrder, WebhookEvent
from tests.billing.conftest import WEBHOOK_SECRET, api, complete, deliver, new_order
from tests.billing.fake_stripe import sign
from tests.helpers import assert_ledger_ok, ledger_state, micro
from wallet.models import CreditLot, LedgerEntry, Wallet

pytestmark = pytest.mark.django_db


def test_completed_checkout_grants_paid_and_bonus_lots_once(user, fake_stripe) -> None:
    order = new_order(user, "100")
    event = fake_stripe.pay(order.provider_session_id)
    response = deliver(event)
    assert response.status_code == 200
    assert response.json() == {
        "received": True,
        "event_id": event["id"],
        "status": "processed",
        "duplicate": False,
    }
    order.refresh_from_db()
    assert order.status == "completed"
    assert order.paid_at is not None and order.completed_at is not None
    assert order.provider_payment_id == event["data"]["object"]["payment_intent"]
    assert (order.paid_amount_minor, order.paid_currency) == (10_000, "usd")
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == micro("103")
    lots = {lot.category: lot for lot in CreditLot.objects.filter(wallet=wallet)}
    assert lots["paid"].amount == micro("100") and lots["bonus"].amount == micro("3")
    assert order.paid_lot == lots["paid"] and order.bonus_lot == lots["bonus"]
    for lot in lots.values():
        assert (lot.reference_type, lot.reference_id) == ("billing.topuporder", str(order.pk))
    kinds = sorted(LedgerEntry.objects.filter(wallet=wallet).values_list("kind", flat=True))
    assert kinds == ["bonus", "topup"]
    stored = WebhookEvent.objects.get(event_id=event["id"])
    assert (stored.status, stored.type, stored.order, stored.attempts) == (
        "processed",
        "checkout.session.completed",
        order,
        1,
    )
    assert stored.payload == event
    assert_ledger_ok(wallet)

    again = deliver(event)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert Wallet.objects.get(user=user).balance == micro("103")
    assert WebhookEvent.objects.count() == 1
    assert_ledger_ok(wallet)


def test_an_order_without_bonus_gets_a_paid_lot_only(user, fake_stripe) -> None:
    complete(fake_stripe, new_order(user, "10"))
    wallet = Wallet.objects.get(user=user)
    assert list(CreditLot.objects.filter(wallet=wallet).values_list("category", "amount")) == [
        ("paid", micro("10"))
    ]


def test_the_same_payment_under_another_event_id_grants_nothing_more(user, fake_stripe) -> None:
    order = new_order(user, "100")
    event = fake_stripe.pay(order.provider_session_id)
    deliver(event)
    resent = dict(event, id="evt_resent_by_stripe_with_a_new_id")
    response = deliver(resent)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert Wallet.objects.get(user=user).balance == micro("103")
    assert_ledger_ok(Wallet.objects.get(user=user))


def test_out_of_order_a_decline_after_completion_changes_nothing(user, fake_stripe) -> None:
    order = new_order(user, "100")
    decline = fake_stripe.decline(order.provider_session_id)
    completed = fake_stripe.pay(order.provider_session_id)
    assert deliver(completed).status_code == 200
    late = deliver(decline)
    assert late.status_code == 200 and late.json()["status"] == "ignored"
    order.refresh_from_db()
    assert order.status == "completed" and order.failure_reason == ""
    assert Wallet.objects.get(user=user).balance == micro("103")


def test_a_declined_card_then_a_successful_retry_completes(user, fake_stripe) -> None:
    order = new_order(user, "100")
    assert deliver(fake_stripe.decline(order.provider_session_id)).status_code == 200
    order.refresh_from_db()
    assert order.status == "failed"
    assert order.failure_reason == "Your card was declined."
    assert Wallet.objects.get(user=user).balance == 0
    assert deliver(fake_stripe.pay(order.provider_session_id)).status_code == 200
    order.refresh_from_db()
    assert order.status == "completed"
    assert Wallet.objects.get(user=user).balance == micro("103")


def test_expired_checkout_cancels_the_order(user, fake_stripe) -> None:
    order = new_order(user, "100")
    response = deliver(fake_stripe.expire(order.provider_session_id))
    assert response.status_code == 200
    order.refresh_from_db()
    assert order.status == "cancelled" and order.closed_at is not None
    assert Wallet.objects.get(user=user).balance == 0


def test_an_expiry_after_completion_changes_nothing(user, fake_stripe) -> None:
    order = complete(fake_stripe, new_order(user, "100"))
    late = fake_stripe.event(
        "checkout.session.expired",
        dict(fake_stripe.sessions[order.provider_session_id], status="expired"),
    )
    assert deliver(late).json()["status"] == "ignored"
    order.refresh_from_db()
    assert order.status == "completed"


@pytest.mark.parametrize(("amount", "currency"), [(1_000, "usd"), (10_000, "eur")])
def test_a_payment_that_does_not_match_the_order_is_flagged_and_grants_nothing(
    user, fake_stripe, amount: int, currency: str
) -> None:
    order = new_order(user, "100")
    wallet = Wallet.objects.get(user=user)
    before = ledger_state(wallet)
    response = deliver(fake_stripe.pay(order.provider_session_id, amount=amount, currency=currency))
    assert response.status_code == 200
    order.refresh_from_db()
    assert order.status == "paid"
    assert order.flagged_reason.startswith(f"Paid {amount} {currency}")
    assert (order.paid_amount_minor, order.paid_currency) == (amount, currency)
    assert ledger_state(wallet) == before
    assert order.paid_lot is None
    # The customer sees the order as under review, not the internal reason.
    seen = api(user).get(f"/api/v1/topups/{order.order_no}").json()
    assert (seen["status"], seen["under_review"], seen["credits_added_micro"]) == ("paid", True, 0)
    assert "flagged" not in json.dumps(seen).lower()


def test_a_payment_after_cancellation_is_flagged_not_granted(user, fake_stripe) -> None:
    order = new_order(user, "100")
    TopUpOrder.objects.filter(pk=order.pk).update(status="cancelled")
    deliver(fake_stripe.pay(order.provider_session_id))
    order.refresh_from_db()
    assert order.status == "paid"
    assert "after the order was cancelled" in order.flagged_reason
    assert Wallet.objects.get(user=user).balance == 0


def test_an_event_for_an_unknown_order_is_stored_and_ignored(user, fake_stripe) -> None:
    order = new_order(user, "100")
    session = dict(
        fake_stripe.sessions[order.provider_session_id],
        id="cs_test_someone_elses",
        client_reference_id="TU-000000-NOTOURS1",
        metadata={"order_no": "TU-000000-NOTOURS1"},
        status="complete",
        payment_status="paid",
        payment_intent="pi_unknown",
    )
    event = fake_stripe.event("checkout.session.completed", session)
    response = deliver(event)
    assert response.status_code == 200
    stored = WebhookEvent.objects.get(event_id=event["id"])
    assert (stored.status, stored.order) == ("ignored", None)
    assert "No order" in stored.error
    order.refresh_from_db()
    assert order.status == "pending"
    assert Wallet.objects.get(user=user).balance == 0


def test_a_payment_for_another_session_of_our_order_is_flagged(user, fake_stripe) -> None:
    order = new_order(user, "100")
    session = dict(
        fake_stripe.sessions[order.provider_session_id],
        id="cs_test_a_second_session",
        status="complete",
        payment_status="paid",
        payment_intent="pi_second",
    )
    deliver(fake_stripe.event("checkout.session.completed", session))
    order.refresh_from_db()
    assert order.status == "paid"
    assert "checkout session cs_test_a_second_session" in order.flagged_reason
    assert Wallet.objects.get(user=user).balance == 0


def test_unhandled_event_types_are_acknowledged(fake_stripe) -> None:
    event = fake_stripe.event("customer.created", {"id": "cus_1", "object": "customer"})
    response = deliver(event)
    assert response.status_code == 200
    assert WebhookEvent.objects.get(event_id=event["id"]).status == "ignored"


def test_async_payments_complete_when_the_money_arrives(user, fake_stripe) -> None:
    order = new_order(user, "100")
    session = fake_stripe.sessions[order.provider_session_id]
    processing = dict(session, status="complete", payment_status="unpaid", payment_intent="pi_x")
    assert deliver(fake_stripe.event("checkout.session.completed", processing)).status_code == 200
    order.refresh_from_db()
    assert order.status == "pending" and order.provider_payment_id == "pi_x"
    succeeded = dict(processing, payment_status="paid")
    deliver(fake_stripe.event("checkout.session.async_payment_succeeded", succeeded))
    order.refresh_from_db()
    assert order.status == "completed"
    assert Wallet.objects.get(user=user).balance == micro("103")


def test_async_payment_failure_fails_the_order(user, fake_stripe) -> None:
    order = new_order(user, "100")
    session = dict(
        fake_stripe.sessions[order.provider_session_id], status="complete", payment_status="unpaid"
    )
    deliver(fake_stripe.event("checkout.session.async_payment_failed", session))
    order.refresh_from_db()
    assert order.status == "failed"


# --- Signatures ------------------------------------------------------------------------------


def _paid_event(user, fake_stripe):  # type: ignore[no-untyped-def]
    order = new_order(user, "100")
    return order, fake_stripe.pay(order.provider_session_id)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param({"secret": "whsec_wrong"}, id="wrong-secret"),
        pytest.param({"signature": ""}, id="no-signature"),
        pytest.param({"signature": "t=abc,v1=def"}, id="garbage"),
        pytest.param({"signature": "t=1700000000"}, id="no-v1"),
        pytest.param({"timestamp": int(time.time()) - 301}, id="stale-timestamp"),
    ],
)
def test_forged_or_stale_webhooks_are_refused_and_nothing_is_stored(
    user, fake_stripe, forge
) -> None:
    order, event = _paid_event(user, fake_stripe)
    response = deliver(event, **forge)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not WebhookEvent.objects.exists()
    order.refresh_from_db()
    assert order.status == "pending"
    assert Wallet.objects.get(user=user).balance == 0


def test_a_signed_body_that_was_altered_is_refused(user, fake_stripe) -> None:
    _order, event = _paid_event(user, fake_stripe)
    payload = json.dumps(event)
    header = sign(payload, WEBHOOK_SECRET)
    tampered = payload.replace('"amount_total": 10000', '"amount_total": 10001')
    assert tampered != payload
    response = deliver(body=tampered, signature=header)
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


def test_a_timestamp_within_tolerance_is_accepted(user, fake_stripe) -> None:
    _order, event = _paid_event(user, fake_stripe)
    assert deliver(event, timestamp=int(time.time()) - 200).status_code == 200


def test_the_signature_is_checked_on_the_raw_body(user, fake_stripe) -> None:
    # Same JSON, different bytes (whitespace): the signature covers the bytes Stripe sent.
    _order, event = _paid_event(user, fake_stripe)
    compact = json.dumps(event, separators=(",", ":"))
    header = sign(compact, WEBHOOK_SECRET)
    assert deliver(body=compact, signature=header).status_code == 200
    assert deliver(body=json.dumps(event, indent=2), signature=header).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        json.dumps({"id": "nope", "type": "x"}),
        json.dumps([1, 2]),
        json.dumps({"id": "evt_1", "type": "checkout.session.completed", "data": {}}),
    ],
)
def test_a_correctly_signed_body_that_is_not_an_event_is_refused(body: str) -> None:
    response = deliver(body=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_payload"
    assert not WebhookEvent.objects.exists()


def test_the_endpoint_refuses_get_and_needs_no_csrf_token(user, fake_stripe) -> None:
    from django.test import Client

    assert Client().get("/billing/webhooks/stripe/").status_code == 405
    _order, event = _paid_event(user, fake_stripe)
    payload = json.dumps(event)
    response = Client(enforce_csrf_checks=True).post(
        "/billing/webhooks/stripe/",
        data=payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign(payload, WEBHOOK_SECRET),
    )
    assert response.status_code == 200


def test_webhooks_are_refused_when_no_secret_is_configured(user, fake_stripe, settings) -> None:
    _order, event = _paid_event(user, fake_stripe)
    settings.STRIPE_WEBHOOK_SECRET = ""
    assert deliver(event).status_code == 400
    assert not WebhookEvent.objects.exists()


def test_a_payment_into_a_closed_wallet_is_flagged_and_grants_nothing(user, fake_stripe) -> None:
    from wallet import services as wallet_services

    order = new_order(user, "100")
    wallet = Wallet.objects.get(user=user)
    wallet_services.wallet_set_status(wallet=wallet, status="closed")
    assert deliver(fake_stripe.pay(order.provider_session_id)).status_code == 200
    order.refresh_from_db()
    assert order.status == "paid" and "wallet is closed" in order.flagged_reason
    assert CreditLot.objects.filter(wallet=wallet).count() == 0
    assert_ledger_ok(wallet)
