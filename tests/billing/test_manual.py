"""The manual provider: bank transfer confirmed by staff; no Stripe involved."""

from __future__ import annotations

import pytest

from billing import services
from billing.errors import PaymentMethodUnavailable, TopUpNotAllowed
from billing.models import Refund, TopUpOrder
from tests.billing.conftest import api, grant, new_order
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, micro
from wallet.models import Wallet

pytestmark = pytest.mark.django_db


def test_a_bank_transfer_order_shows_instructions_and_calls_no_provider(user, fake_stripe) -> None:
    response = api(user).post(
        "/api/v1/topups",
        {"amount": "1000", "payment_method": "bank_transfer"},
        content_type="application/json",
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["payment_method"], body["provider"], body["status"]) == (
        "bank_transfer",
        "manual",
        "pending",
    )
    assert body["checkout_url"] == ""
    assert body["order_no"] in body["instructions"] and "1000.00 USD" in body["instructions"]
    assert body["total_credits"] == "1100"
    assert fake_stripe.requests == []


def test_staff_confirm_the_transfer_and_the_credits_arrive_once(user, confirm_staff) -> None:
    order = new_order(user, "1000", payment_method="bank_transfer")
    confirmed = services.order_confirm_manual_payment(order=order, actor=confirm_staff)
    assert confirmed.status == "completed"
    assert confirmed.confirmed_by == confirm_staff
    again = services.order_confirm_manual_payment(order=order, actor=confirm_staff)
    assert again.status == "completed"
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == micro("1100")
    assert_ledger_ok(wallet)


def test_a_transfer_of_the_wrong_amount_is_flagged(user, confirm_staff) -> None:
    order = new_order(user, "100", payment_method="bank_transfer")
    flagged = services.order_confirm_manual_payment(
        order=order, actor=confirm_staff, amount_minor=9_000
    )
    assert flagged.status == "paid" and "Paid 9000 usd" in flagged.flagged_reason
    assert Wallet.objects.get(user=user).balance == 0


def test_confirming_needs_the_permission_and_a_manual_order(
    user, staff, confirm_staff, fake_stripe
) -> None:
    manual = new_order(user, "100", payment_method="bank_transfer")
    with pytest.raises(TopUpNotAllowed):
        services.order_confirm_manual_payment(order=manual, actor=staff)
    with pytest.raises(TopUpNotAllowed):
        services.order_confirm_manual_payment(order=manual, actor=user)
    card = new_order(user, "100")
    with pytest.raises(PaymentMethodUnavailable):
        services.order_confirm_manual_payment(order=card, actor=confirm_staff)
    assert Wallet.objects.get(user=user).balance == 0
    assert set(TopUpOrder.objects.values_list("status", flat=True)) == {"pending"}


def test_confirming_from_the_admin(user) -> None:
    order = new_order(user, "100", payment_method="bank_transfer")
    clerk = grant(UserFactory(is_staff=True), "confirm_topuporder", "view_topuporder")
    response = api(clerk).post(
        "/admin/billing/topuporder/",
        {"action": "confirm_manual_payment", "_selected_action": [order.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "now completed" in response.content.decode()
    assert Wallet.objects.get(user=user).balance == micro("103")


def test_manual_payments_can_be_switched_off(user, settings) -> None:
    settings.BILLING_MANUAL_PAYMENTS_ENABLED = False
    response = api(user).post(
        "/api/v1/topups",
        {"amount": "100", "payment_method": "bank_transfer"},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "payment_method_unavailable"
    assert not TopUpOrder.objects.exists()


def test_refunding_a_manual_order_records_it_without_a_provider_call(
    user, confirm_staff, refund_staff, fake_stripe
) -> None:
    order = services.order_confirm_manual_payment(
        order=new_order(user, "100", payment_method="bank_transfer"), actor=confirm_staff
    )
    refund = services.refund_create(
        order=order, amount_minor=None, idempotency_key="m1", actor=refund_staff, reason="r"
    )
    assert refund.status == "succeeded"
    assert refund.provider_refund_id == f"manual-refund-{refund.pk}"
    assert fake_stripe.requests == []
    assert Refund.objects.get().order.status == "refunded"
    assert Wallet.objects.get(user=user).balance == 0
