"""The billing admin: packages and bonus rules editable (overlaps refused), records read-only."""

from __future__ import annotations

import pytest

from billing.models import BonusRule, TopUpPackage
from tests.billing.conftest import api, complete, deliver, new_order
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db):  # type: ignore[no-untyped-def]
    return api(UserFactory(is_staff=True, is_superuser=True))


def test_every_billing_admin_page_renders(admin_client, user, fake_stripe) -> None:
    order = complete(fake_stripe, new_order(user, "100"))
    deliver(fake_stripe.event("customer.created", {"id": "cus_1", "object": "customer"}))
    for url in (
        "/admin/billing/topuppackage/",
        "/admin/billing/bonusrule/",
        "/admin/billing/topuporder/",
        f"/admin/billing/topuporder/{order.pk}/change/",
        "/admin/billing/refund/",
        "/admin/billing/webhookevent/",
        "/admin/billing/topuporder/?flagged_at__isempty=0",
    ):
        response = admin_client.get(url)
        assert response.status_code == 200, url
    page = admin_client.get("/admin/billing/topuporder/").content.decode()
    assert order.order_no in page and "103.00" in page


def test_orders_cannot_be_added_edited_or_deleted_in_the_admin(admin_client, user) -> None:
    order = new_order(user, "10", payment_method="bank_transfer")
    assert admin_client.get("/admin/billing/topuporder/add/").status_code == 403
    assert (
        admin_client.post(
            f"/admin/billing/topuporder/{order.pk}/change/", {"status": "completed"}
        ).status_code
        == 403
    )
    assert (
        admin_client.post(
            f"/admin/billing/topuporder/{order.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    order.refresh_from_db()
    assert order.status == "pending"


def test_an_overlapping_bonus_rule_is_refused_in_the_admin(admin_client) -> None:
    before = BonusRule.objects.count()
    response = admin_client.post(
        "/admin/billing/bonusrule/add/",
        {
            "currency": "usd",
            "min_amount_minor": "45000",
            "max_amount_minor": "55000",
            "percent": "5",
            "is_active": "on",
        },
    )
    assert response.status_code == 200
    assert "overlaps" in response.content.decode()
    assert BonusRule.objects.count() == before


def test_a_package_price_is_edited_in_the_admin_and_quoted_by_the_formula(
    admin_client, user
) -> None:
    package = TopUpPackage.objects.get(code="plus")
    response = admin_client.post(
        f"/admin/billing/topuppackage/{package.pk}/change/",
        {
            "code": "plus",
            "name": "Plus",
            "kind": "package",
            "description": "",
            "amount_minor": "15000",
            "currency": "usd",
            "is_active": "on",
            "sort_order": "20",
        },
    )
    assert response.status_code == 302
    quote = api(user).get("/api/v1/topups/quote", {"package": "plus"}).json()
    assert (quote["amount"], quote["total_credits"]) == ("150.00", "154.5")
