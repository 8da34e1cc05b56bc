"""Refunds: through Stripe, of the unused part only, idempotent, recoverable after a crash."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from billing import services
from billing.models import Refund, TopUpOrder
from tests.billing.conftest import api, complete, deliver, grant, new_order
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, ledger_state, micro
from wallet import services as wallet_services
from wallet.models import CreditLot, LedgerEntry, Wallet

pytestmark = pytest.mark.django_db


def spend(wallet: Wallet, credits: str) -> None:
    wallet_services.wallet_debit(
        wallet=wallet,
        amount=micro(credits),
        idempotency_key=f"spend-{credits}-{LedgerEntry.objects.count()}",
        reference=wallet_services.Ref("test", "usage"),
    )


def refund_api(staff, order: TopUpOrder, key: str = "r1", **body):  # type: ignore[no-untyped-def]
    body.setdefault("reason", "Customer asked")
    return api(staff).post(
        f"/api/v1/topups/{order.order_no}/refunds",
        body,
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


@pytest.fixture
def paid(user, fake_stripe) -> TopUpOrder:
    return complete(fake_stripe, new_order(user, "100"))


def test_full_refund_of_an_unused_order(user, paid, refund_staff, fake_stripe) -> None:
    response = refund_api(refund_staff, paid)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["amount"], body["order_status"]) == (
        "succeeded",
        "100.00",
        "refunded",
    )
    assert (body["paid_micro"], body["bonus_micro"]) == (micro("100"), micro("3"))
    [call] = fake_stripe.calls("POST", "/v1/refunds")
    assert call["payment_intent"] == paid.provider_payment_id and call["amount"] == "10000"
    refund = Refund.objects.get()
    assert refund.provider_refund_id in fake_stripe.refunds
    assert refund.requested_by == refund_staff
    paid.refresh_from_db()
    assert (paid.status, paid.refunded_amount_minor) == ("refunded", 10_000)
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == 0
    entries = LedgerEntry.objects.filter(wallet=wallet, kind="refund")
    assert sorted(entries.values_list("amount", flat=True)) == [-micro("100"), -micro("3")]
    assert {e.reference_type for e in entries} == {"billing.refund"}
    assert {e.actor for e in entries} == {refund_staff}
    assert_ledger_ok(wallet)
    # Stripe's charge.refunded for our own refund is recognised: nothing is taken twice.
    [charge_refunded] = fake_stripe.take_events("charge.refunded")
    assert deliver(charge_refunded).json()["status"] == "ignored"
    assert Refund.objects.count() == 1
    assert_ledger_ok(wallet)


def test_refund_of_a_half_used_order_is_limited_to_the_unused_part(
    user, paid, refund_staff, fake_stripe
) -> None:
    wallet = Wallet.objects.get(user=user)
    spend(wallet, "51.5")  # half of the 103 credits: the 3 bonus first, then 48.5 paid
    before = ledger_state(wallet)
    too_much = refund_api(refund_staff, paid, key="too-much", amount="50.01")
    assert too_much.status_code == 409
    error = too_much.json()["error"]
    assert error["code"] == "refund_exceeds_refundable"
    assert error["detail"]["refundable"] == "50.00"
    assert ledger_state(wallet) == before
    assert not Refund.objects.exists()
    assert fake_stripe.calls("POST", "/v1/refunds") == []
    paid.refresh_from_db()
    assert paid.status == "completed"

    ok = refund_api(refund_staff, paid, key="half", amount="50")
    assert ok.status_code == 201, ok.content
    assert (ok.json()["paid_micro"], ok.json()["bonus_micro"]) == (micro("51.5"), 0)
    paid.refresh_from_db()
    assert (paid.status, paid.refunded_amount_minor) == ("partially_refunded", 5_000)
    assert Wallet.objects.get(pk=wallet.pk).balance == 0
    nothing_left = refund_api(refund_staff, paid, key="more", amount="0.01")
    assert nothing_left.status_code == 409
    assert nothing_left.json()["error"]["detail"]["refundable"] == "0.00"
    assert_ledger_ok(wallet)


def test_refund_without_an_amount_refunds_everything_refundable(user, paid, refund_staff) -> None:
    wallet = Wallet.objects.get(user=user)
    spend(wallet, "20.6")  # 20% of 103
    response = refund_api(refund_staff, paid)
    assert response.json()["amount"] == "80.00"
    assert Wallet.objects.get(pk=wallet.pk).balance == 0
    assert_ledger_ok(wallet)


def test_partial_refunds_add_up_to_exactly_the_order(user, paid, refund_staff) -> None:
    wallet = Wallet.objects.get(user=user)
    first = refund_api(refund_staff, paid, key="a", amount="30").json()
    assert (first["paid_micro"], first["bonus_micro"]) == (micro("30"), micro("0.9"))
    assert Wallet.objects.get(pk=wallet.pk).balance == micro("72.1")
    second = refund_api(refund_staff, paid, key="b", amount="70").json()
    assert (second["paid_micro"], second["bonus_micro"]) == (micro("70"), micro("2.1"))
    assert second["order_status"] == "refunded"
    assert Wallet.objects.get(pk=wallet.pk).balance == 0
    assert set(CreditLot.objects.filter(wallet=wallet).values_list("remaining", flat=True)) == {0}
    assert_ledger_ok(wallet)


def test_refunds_are_idempotent(user, paid, refund_staff, fake_stripe) -> None:
    first = refund_api(refund_staff, paid, key="same", amount="10")
    again = refund_api(refund_staff, paid, key="same", amount="10")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert len(fake_stripe.calls("POST", "/v1/refunds")) == 1
    assert Wallet.objects.get(user=user).balance == micro("92.7")
    conflict = refund_api(refund_staff, paid, key="same", amount="20")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"


@pytest.mark.parametrize("status", ["pending", "cancelled", "failed"])
def test_orders_that_were_not_completed_cannot_be_refunded(
    user, refund_staff, fake_stripe, status: str
) -> None:
    order = new_order(user, "100")
    TopUpOrder.objects.filter(pk=order.pk).update(status=status)
    response = refund_api(refund_staff, order)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "order_not_refundable"
    assert not Refund.objects.exists()
    assert fake_stripe.calls("POST", "/v1/refunds") == []


def test_refund_input_errors(user, paid, refund_staff) -> None:
    wallet = Wallet.objects.get(user=user)
    before = ledger_state(wallet)
    cases = [
        ({"amount": "ten"}, "r", "invalid_amount", 400),
        ({"amount": "-5"}, "r", "invalid_amount", 400),
        ({"amount": "1.234"}, "r", "invalid_amount", 400),
        ({"amount": "100.01"}, "r", "refund_exceeds_refundable", 409),
        ({"amount": "10"}, "", "idempotency_key_required", 400),
        ({"amount": "10", "reason": ""}, "r", "invalid_input", 400),
    ]
    for body, key, code, status in cases:
        response = refund_api(refund_staff, paid, key=key, **body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    unknown = api(refund_staff).post(
        "/api/v1/topups/TU-000000-NOPE/refunds",
        {"reason": "x"},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert unknown.status_code == 404
    assert ledger_state(wallet) == before
    assert not Refund.objects.exists()


def test_only_staff_with_the_refund_permission_can_refund(user, paid, staff) -> None:
    assert refund_api(user, paid).status_code == 403
    assert refund_api(staff, paid).status_code == 403
    customer_with_perm = grant(UserFactory(), "refund_topuporder")
    assert refund_api(customer_with_perm, paid).status_code == 403
    response = Client().post(f"/api/v1/topups/{paid.order_no}/refunds", {"reason": "x"})
    assert response.status_code == 401  # anonymous: asked to authenticate
    assert response.json()["error"]["code"] == "not_authenticated"
    assert not Refund.objects.exists()
    assert Wallet.objects.get(user=user).balance == micro("103")


def test_credits_reserved_by_requests_in_flight_are_not_refunded(user, paid, refund_staff) -> None:
    wallet = Wallet.objects.get(user=user)
    wallet_services.hold_create(wallet=wallet, amount=micro("50"), request_id="in-flight")
    before = ledger_state(wallet)
    response = refund_api(refund_staff, paid)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "lot_not_reversible"
    assert ledger_state(wallet) == before
    assert not Refund.objects.exists()


def test_a_refund_stripe_refuses_gives_the_credits_back(
    user, paid, refund_staff, fake_stripe
) -> None:
    fake_stripe.fail_next(
        "POST",
        "/v1/refunds",
        status=400,
        type_="invalid_request_error",
        code="charge_disputed",
        message="Charge ch_1 has been charged back.",
    )
    response = refund_api(refund_staff, paid, key="refused")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "refund_failed"
    refund = Refund.objects.get()
    assert refund.status == "failed" and "charged back" in refund.error
    paid.refresh_from_db()
    assert (paid.status, paid.refunded_amount_minor) == ("completed", 0)
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == micro("103")
    restored = LedgerEntry.objects.filter(wallet=wallet, kind="adjustment")
    assert sorted(restored.values_list("amount", flat=True)) == [micro("3"), micro("100")]
    assert {e.actor for e in restored} == {refund_staff}
    assert_ledger_ok(wallet)
    # The same key gives the same answer; a new request can refund the restored credits.
    assert refund_api(refund_staff, paid, key="refused").status_code == 502
    retry = refund_api(refund_staff, paid, key="second-try")
    assert retry.status_code == 201 and retry.json()["amount"] == "100.00"
    assert Wallet.objects.get(pk=wallet.pk).balance == 0
    assert_ledger_ok(wallet)


def test_a_refund_whose_answer_was_lost_is_finished_by_reconciliation_once(
    user, paid, refund_staff, fake_stripe
) -> None:
    # Stripe makes the refund but the answer never reaches us (timeout, crash).
    fake_stripe.fail_next("POST", "/v1/refunds", status=500, after=True)
    response = refund_api(refund_staff, paid, key="lost")
    assert response.status_code == 503
    refund = Refund.objects.get()
    assert refund.status == "pending" and refund.provider_refund_id is None
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == 0  # taken back before Stripe was asked: cannot be spent meanwhile
    assert len(fake_stripe.refunds) == 1
    # Stripe's webhook for it arrives while our refund is still pending: not a second refund.
    [charge_refunded] = fake_stripe.take_events("charge.refunded")
    assert deliver(charge_refunded).json()["status"] == "ignored"
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - dt.timedelta(minutes=5))
    report = services.payments_reconcile()
    assert report.refunds_retried == 1
    refund.refresh_from_db()
    assert refund.status == "succeeded"
    assert refund.provider_refund_id == next(iter(fake_stripe.refunds))
    assert len(fake_stripe.refunds) == 1  # the same idempotency key: one refund at Stripe
    paid.refresh_from_db()
    assert paid.status == "refunded"
    assert_ledger_ok(wallet)


def test_a_retry_with_the_same_key_finishes_a_pending_refund(
    user, paid, refund_staff, fake_stripe
) -> None:
    fake_stripe.fail_next("POST", "/v1/refunds", status=503)
    assert refund_api(refund_staff, paid, key="k").status_code == 503
    assert refund_api(refund_staff, paid, key="k").status_code == 200
    assert Refund.objects.get().status == "succeeded"
    assert len(fake_stripe.refunds) == 1


def test_a_refund_made_in_the_stripe_dashboard_takes_back_the_matching_credits(
    user, paid, fake_stripe
) -> None:
    event = fake_stripe.refund_in_dashboard(paid.provider_payment_id, 5_000)
    assert deliver(event).json()["status"] == "processed"
    refund = Refund.objects.get()
    assert (refund.source, refund.status, refund.amount_minor) == ("provider", "succeeded", 5_000)
    assert refund.credits_micro == micro("51.5")
    paid.refresh_from_db()
    assert (paid.status, paid.refunded_amount_minor) == ("partially_refunded", 5_000)
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == micro("51.5")
    assert deliver(event).json()["duplicate"] is True
    assert_ledger_ok(wallet)


def test_a_dashboard_refund_beyond_the_unused_credits_is_recorded_and_flagged(
    user, paid, fake_stripe
) -> None:
    wallet = Wallet.objects.get(user=user)
    spend(wallet, "100")
    deliver(fake_stripe.refund_in_dashboard(paid.provider_payment_id, 10_000))
    refund = Refund.objects.get()
    assert (refund.credits_micro, refund.shortfall_micro) == (micro("3"), micro("100"))
    paid.refresh_from_db()
    assert paid.status == "refunded"
    assert "already used" in paid.flagged_reason
    assert Wallet.objects.get(pk=wallet.pk).balance == 0
    assert_ledger_ok(wallet)


def test_refunding_a_flagged_payment_in_the_dashboard_closes_it(user, fake_stripe) -> None:
    order = new_order(user, "100")
    deliver(fake_stripe.pay(order.provider_session_id, amount=500))
    order.refresh_from_db()
    assert order.status == "paid" and order.flagged_reason
    deliver(fake_stripe.refund_in_dashboard(order.provider_payment_id, 500))
    order.refresh_from_db()
    assert order.status == "refunded"
    assert Refund.objects.get().credits_micro == 0
    assert Wallet.objects.get(user=user).balance == 0


def test_the_admin_action_refunds_the_unused_part(user, paid, fake_stripe) -> None:
    from tests.billing.conftest import grant as give

    admin_user = give(
        UserFactory(is_staff=True, is_superuser=False), "refund_topuporder", "view_topuporder"
    )
    wallet = Wallet.objects.get(user=user)
    spend(wallet, "10.3")
    client = api(admin_user)
    response = client.post(
        "/admin/billing/topuporder/",
        {"action": "refund_unused", "_selected_action": [paid.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "refunded 90.00 USD" in response.content.decode()
    refund = Refund.objects.get()
    assert (refund.source, refund.amount_minor) == ("admin", 9_000)
    assert Wallet.objects.get(pk=wallet.pk).balance == 0
    assert_ledger_ok(wallet)


def test_the_admin_refund_action_needs_the_permission(user, paid) -> None:
    from tests.billing.conftest import grant as give

    viewer = give(UserFactory(is_staff=True), "view_topuporder")
    response = api(viewer).post(
        "/admin/billing/topuporder/",
        {"action": "refund_unused", "_selected_action": [paid.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert not Refund.objects.exists()
