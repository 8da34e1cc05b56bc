"""Creating orders and their Stripe Checkout Sessions; reading them back (own orders only)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone

from billing import services
from billing.errors import PaymentProviderUnavailable
from billing.models import TopUpOrder
from tests.billing.conftest import api, complete, new_order, stripe_session
from tests.factories import OrganizationFactory, UserFactory
from tests.helpers import ledger_state, micro
from wallet.models import Wallet

pytestmark = pytest.mark.django_db


def test_creating_an_order_opens_a_checkout_session(user, fake_stripe) -> None:
    response = api(user).post("/api/v1/topups", {"amount": "100"}, content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    order = TopUpOrder.objects.get(order_no=body["order_no"])
    assert body["status"] == "pending"
    assert body["checkout_url"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    assert (body["amount"], body["currency"], body["total_credits"]) == ("100.00", "usd", "103")
    assert body["credits_added_micro"] == 0
    assert (order.base_micro, order.bonus_micro) == (micro("100"), micro("3"))
    assert order.payment_method == "card" and order.provider == "stripe"
    session = stripe_session(fake_stripe, order)
    assert session["amount_total"] == 10_000 and session["currency"] == "usd"
    assert session["client_reference_id"] == order.order_no
    assert session["metadata"] == {"order_no": order.order_no}
    assert session["success_url"] == (
        f"https://credits.test/billing/return/?order={order.order_no}"
    )
    assert session["cancel_url"] == (f"https://credits.test/billing/cancel/?order={order.order_no}")
    assert session["customer_email"] == user.email
    assert session["_payment_intent_data"]["metadata"] == {"order_no": order.order_no}
    # Nothing is credited before payment.
    assert Wallet.objects.get(user=user).balance == 0


def test_the_quote_is_frozen_on_the_order(user, fake_stripe, settings) -> None:
    order = new_order(user, "500")
    settings.CREDITS_PER_USD = Decimal(1000)
    assert (order.base_micro, order.bonus_micro) == (micro("500"), micro("20"))
    completed = complete(fake_stripe, order)
    wallet = Wallet.objects.get(user=user)
    assert wallet.balance == micro("520")
    assert completed.credits_per_usd == Decimal(1)


def test_order_for_a_package(user, fake_stripe) -> None:
    body = (
        api(user).post("/api/v1/topups", {"package": "pro"}, content_type="application/json").json()
    )
    order = TopUpOrder.objects.get(order_no=body["order_no"])
    assert order.package is not None and order.package.code == "pro"
    assert order.amount_minor == 20_000
    assert body["package"] == "pro"


def test_order_numbers_are_human_readable_and_unique(user, fake_stripe) -> None:
    numbers = {new_order(user, "10").order_no for _ in range(20)}
    assert len(numbers) == 20
    for number in numbers:
        prefix, day, suffix = number.split("-")
        assert prefix == "TU" and day == timezone.now().strftime("%y%m%d")
        assert len(suffix) == 8 and not set(suffix) & set("ILOU")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"amount": "1"}, "amount_below_minimum"),
        ({"amount": "20000"}, "amount_above_maximum"),
        ({"amount": "lots"}, "invalid_amount"),
        ({"amount": "10.5.5"}, "invalid_amount"),
        ({"amount": "100", "currency": "gbp"}, "unsupported_currency"),
        ({"package": "gold"}, "unknown_package"),
        ({}, "invalid_amount"),
        ({"amount": "100", "payment_method": "bitcoin"}, "invalid_input"),
        ({"amount": "100", "organization": "not-mine"}, "not_allowed"),
    ],
)
def test_bad_input_creates_nothing(user, fake_stripe, body, code: str) -> None:
    before = ledger_state(Wallet.objects.get(user=user))
    response = api(user).post("/api/v1/topups", body, content_type="application/json")
    assert response.status_code in (400, 403), response.content
    assert response.json()["error"]["code"] == code
    assert not TopUpOrder.objects.exists()
    assert fake_stripe.calls("POST", "/v1/checkout/sessions") == []
    assert ledger_state(Wallet.objects.get(user=user)) == before


def test_malformed_json_is_refused(user, fake_stripe) -> None:
    response = api(user).post("/api/v1/topups", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_request"
    assert not TopUpOrder.objects.exists()


def test_the_same_idempotency_key_returns_the_same_order_and_session(user, fake_stripe) -> None:
    client = api(user)
    first = client.post(
        "/api/v1/topups",
        {"amount": "50"},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="buy-50",
    )
    again = client.post(
        "/api/v1/topups",
        {"amount": "50"},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="buy-50",
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["order_no"] == again.json()["order_no"]
    assert first.json()["checkout_url"] == again.json()["checkout_url"]
    assert TopUpOrder.objects.count() == 1
    assert len(fake_stripe.sessions) == 1
    conflict = client.post(
        "/api/v1/topups",
        {"amount": "60"},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="buy-50",
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"


def test_stripe_outage_at_creation_leaves_a_pending_order_that_a_retry_reopens(
    user, fake_stripe
) -> None:
    fake_stripe.fail_next("POST", "/v1/checkout/sessions", status=500)
    client = api(user)
    failed = client.post(
        "/api/v1/topups",
        {"amount": "20"},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "payment_provider_unavailable"
    order = TopUpOrder.objects.get()
    assert order.status == "pending" and order.provider_session_id is None
    retried = client.post(
        "/api/v1/topups",
        {"amount": "20"},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert retried.status_code == 200
    assert retried.json()["checkout_url"]
    order.refresh_from_db()
    assert order.provider_session_id in fake_stripe.sessions


def test_stripe_refusing_the_session_fails_the_order(user, fake_stripe) -> None:
    fake_stripe.fail_next(
        "POST",
        "/v1/checkout/sessions",
        status=400,
        type_="invalid_request_error",
        message="Invalid currency: usd.",
    )
    response = api(user).post("/api/v1/topups", {"amount": "20"}, content_type="application/json")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "payment_provider_error"
    order = TopUpOrder.objects.get()
    assert order.status == "failed"
    assert "Invalid currency" in order.failure_reason


def test_card_payments_unavailable_without_stripe_keys(user, settings) -> None:
    settings.STRIPE_SECRET_KEY = ""
    response = api(user).post("/api/v1/topups", {"amount": "20"}, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "payment_method_unavailable"
    assert not TopUpOrder.objects.exists()


def test_stripe_is_never_called_inside_a_transaction(user) -> None:
    with pytest.raises(RuntimeError, match="inside a database transaction"), transaction.atomic():
        services.topup_order_create(user=user, amount="10")


def test_creating_orders_is_rate_limited(user, fake_stripe, settings) -> None:
    settings.TOPUP_CREATE_LIMIT = 2
    client = api(user)
    for _ in range(2):
        assert (
            client.post(
                "/api/v1/topups", {"amount": "10"}, content_type="application/json"
            ).status_code
            == 201
        )
    limited = client.post("/api/v1/topups", {"amount": "10"}, content_type="application/json")
    assert limited.status_code == 429
    assert int(limited["Retry-After"]) > 0
    assert TopUpOrder.objects.count() == 2


def test_organization_owners_can_top_up_the_pool(user, fake_stripe) -> None:
    organization = OrganizationFactory(owner=user)
    response = api(user).post(
        "/api/v1/topups",
        {"amount": "100", "organization": organization.slug},
        content_type="application/json",
    )
    assert response.status_code == 201
    order = TopUpOrder.objects.get()
    assert order.wallet == Wallet.objects.get(organization=organization)
    complete(fake_stripe, order)
    assert Wallet.objects.get(organization=organization).balance == micro("103")
    assert Wallet.objects.get(user=user).balance == 0


def test_plain_members_cannot_top_up_the_pool(user, fake_stripe) -> None:
    from accounts import services as account_services

    organization = OrganizationFactory()
    account_services.membership_add(
        organization=organization, user=user, actor=organization.memberships.get().user
    )
    response = api(user).post(
        "/api/v1/topups",
        {"amount": "100", "organization": organization.slug},
        content_type="application/json",
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_allowed"
    assert not TopUpOrder.objects.exists()


# --- Reading orders ----------------------------------------------------------------------------


def test_list_shows_the_bills_of_the_caller_with_filters(user, fake_stripe) -> None:
    paid = complete(fake_stripe, new_order(user, "100"))
    pending = new_order(user, "20")
    old = new_order(user, "30")
    TopUpOrder.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=40))
    new_order(UserFactory(), "40")  # someone else's
    client = api(user)
    everything = client.get("/api/v1/topups").json()
    assert everything["count"] == 3
    assert [o["order_no"] for o in everything["results"]] == [
        pending.order_no,
        paid.order_no,
        old.order_no,
    ]
    row = everything["results"][1]
    assert row["payment_method"] == "card"
    assert row["credits_added_micro"] == micro("103")
    assert row["amount"] == "100.00" and row["status"] == "completed"
    assert row["created_at"]
    completed = client.get("/api/v1/topups", {"status": "completed"}).json()
    assert [o["order_no"] for o in completed["results"]] == [paid.order_no]
    both = client.get("/api/v1/topups", {"status": "completed,pending"}).json()
    assert both["count"] == 3
    since = (timezone.now() - dt.timedelta(days=7)).date().isoformat()
    recent = client.get("/api/v1/topups", {"created_after": since}).json()
    assert recent["count"] == 2
    before = client.get("/api/v1/topups", {"created_before": since}).json()
    assert [o["order_no"] for o in before["results"]] == [old.order_no]
    page = client.get("/api/v1/topups", {"limit": 1, "offset": 1}).json()
    assert [o["order_no"] for o in page["results"]] == [paid.order_no]


@pytest.mark.parametrize(
    "params",
    [{"status": "shipped"}, {"created_after": "yesterday"}, {"created_before": "2025-13-01"}],
)
def test_list_refuses_bad_filters(user, params) -> None:
    response = api(user).get("/api/v1/topups", params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


def test_detail_is_for_the_owner_only(user, other_user, fake_stripe) -> None:
    order = new_order(user, "10")
    mine = api(user).get(f"/api/v1/topups/{order.order_no}")
    assert mine.status_code == 200 and mine.json()["order_no"] == order.order_no
    theirs = api(other_user).get(f"/api/v1/topups/{order.order_no}")
    assert theirs.status_code == 404
    assert theirs.json()["error"]["code"] == "order_not_found"
    assert api(other_user).get("/api/v1/topups").json()["count"] == 0
    assert Client().get(f"/api/v1/topups/{order.order_no}").status_code == 401


def test_cancel_is_for_the_owner_only_and_expires_the_session(
    user, other_user, fake_stripe
) -> None:
    order = new_order(user, "10")
    theirs = api(other_user).post(f"/api/v1/topups/{order.order_no}/cancel")
    assert theirs.status_code == 404
    assert stripe_session(fake_stripe, order)["status"] == "open"
    mine = api(user).post(f"/api/v1/topups/{order.order_no}/cancel")
    assert mine.status_code == 200
    assert mine.json()["status"] == "cancelled"
    assert mine.json()["checkout_url"] == ""
    assert stripe_session(fake_stripe, order)["status"] == "expired"
    again = api(user).post(f"/api/v1/topups/{order.order_no}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "order_status_conflict"


def test_cancelling_an_order_paid_meanwhile_completes_it_instead(user, fake_stripe) -> None:
    order = new_order(user, "10")
    fake_stripe.pay(order.provider_session_id)  # the webhook has not arrived yet
    response = api(user).post(f"/api/v1/topups/{order.order_no}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert Wallet.objects.get(user=user).balance == micro("10")


def test_stripe_outage_is_reported_to_the_creator(user, fake_stripe) -> None:
    fake_stripe.fail_next("POST", "/v1/checkout/sessions", status=503)
    with pytest.raises(PaymentProviderUnavailable):
        new_order(user, "10")
