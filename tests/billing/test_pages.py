"""The plain pages Stripe Checkout sends the customer back to."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.billing.conftest import api, complete, new_order
from tests.helpers import micro
from wallet.models import Wallet

pytestmark = pytest.mark.django_db


def test_return_page_shows_the_status_and_asks_stripe_if_still_pending(user, fake_stripe) -> None:
    order = new_order(user, "100")
    fake_stripe.pay(order.provider_session_id)  # paid; the webhook is not here yet
    page = api(user).get("/billing/return/", {"order": order.order_no})
    assert page.status_code == 200
    html = page.content.decode()
    assert order.order_no in html
    assert "Completed" in html and "103.00 credits were added" in html
    assert f'data-api-url="/api/v1/topups/{order.order_no}"' in html
    assert Wallet.objects.get(user=user).balance == micro("103")


def test_return_page_polls_while_pending_and_asks_stripe_at_most_every_few_seconds(
    user, fake_stripe
) -> None:
    order = new_order(user, "100")
    client = api(user)
    for _ in range(5):
        html = client.get("/billing/return/", {"order": order.order_no}).content.decode()
        assert "Pending" in html and 'data-final="false"' in html
    # Once per 10-second window (two if the loads straddle a window boundary).
    assert 1 <= len(fake_stripe.calls("GET", "/v1/checkout/sessions/")) <= 2


def test_return_and_cancel_pages_are_for_the_owner_only(user, other_user, fake_stripe) -> None:
    order = new_order(user, "100")
    for url in ("/billing/return/", "/billing/cancel/"):
        assert api(other_user).get(url, {"order": order.order_no}).status_code == 404
        assert api(user).get(url, {"order": "TU-NOPE"}).status_code == 404
        anonymous = Client().get(url, {"order": order.order_no})
        assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert api(other_user).post("/billing/cancel/", {"order": order.order_no}).status_code == 404
    order.refresh_from_db()
    assert order.status == "pending"


def test_cancel_page_offers_to_cancel_with_csrf(user, fake_stripe) -> None:
    order = new_order(user, "100")
    client = api(user)
    page = client.get("/billing/cancel/", {"order": order.order_no}).content.decode()
    assert "csrfmiddlewaretoken" in page and order.checkout_url in page
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post("/billing/cancel/", {"order": order.order_no}).status_code == 403
    response = client.post("/billing/cancel/", {"order": order.order_no}, follow=True)
    assert "The order was cancelled." in response.content.decode()
    order.refresh_from_db()
    assert order.status == "cancelled"


def test_cancel_page_of_a_completed_order_only_shows_it(user, fake_stripe) -> None:
    order = complete(fake_stripe, new_order(user, "100"))
    page = api(user).get("/billing/cancel/", {"order": order.order_no}).content.decode()
    assert "Cancel this order" not in page and "Completed" in page
