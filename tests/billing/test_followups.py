"""After-commit follow-ups: receipt and refund emails (exactly once), and the selectors other
apps use."""

from __future__ import annotations

import pytest
from django.core import mail

from billing import selectors, services, tasks
from billing.errors import TopUpOrderNotFound
from tests.billing.conftest import complete, new_order
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_completion_emails_a_receipt_once_after_commit(
    user, fake_stripe, django_capture_on_commit_callbacks
) -> None:
    order = new_order(user, "100")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        order = complete(fake_stripe, order)
    assert len(callbacks) == 1
    [receipt] = mail.outbox
    assert receipt.to == [user.email]
    assert order.order_no in receipt.subject
    assert "Total credits:  103.00" in receipt.body
    assert "Bonus credits:  3.00" in receipt.body
    assert "100.00 USD" in receipt.body
    assert "&" not in receipt.body
    tasks.topup_completed_followups.delay(order.pk)  # a retry or a second worker
    assert len(mail.outbox) == 1
    order.refresh_from_db()
    assert order.receipt_sent_at is not None


def test_no_receipt_for_an_order_that_did_not_complete(user, fake_stripe) -> None:
    order = new_order(user, "100")
    tasks.topup_completed_followups.delay(order.pk)
    assert mail.outbox == []


def test_a_refund_emails_a_confirmation_once(
    user, fake_stripe, refund_staff, django_capture_on_commit_callbacks
) -> None:
    order = complete(fake_stripe, new_order(user, "100"))
    with django_capture_on_commit_callbacks(execute=True):
        refund = services.refund_create(
            order=order, amount_minor=2_500, idempotency_key="r", actor=refund_staff, reason="r"
        )
    [confirmation] = mail.outbox
    assert confirmation.to == [user.email]
    assert "25.00 USD" in confirmation.body
    assert "Partially refunded" in confirmation.body
    tasks.topup_refunded_followups.delay(order.pk, refund.pk)
    assert len(mail.outbox) == 1


def test_user_has_completed_topup(user, other_user, fake_stripe, refund_staff) -> None:
    assert selectors.user_has_completed_topup(user=user) is False
    order = new_order(user, "100")
    assert selectors.user_has_completed_topup(user=user) is False
    order = complete(fake_stripe, order)
    assert selectors.user_has_completed_topup(user=user) is True
    assert selectors.user_has_completed_topup(user=other_user) is False
    services.refund_create(
        order=order, amount_minor=None, idempotency_key="all", actor=refund_staff, reason="r"
    )
    assert selectors.user_has_completed_topup(user=user) is False


def test_order_selectors_respect_ownership(user, fake_stripe) -> None:
    order = new_order(user, "10")
    stranger = UserFactory()
    assert selectors.topup_order_get(order_no=order.order_no, user=user) == order
    assert selectors.topup_order_get(order_no=order.order_no) == order
    with pytest.raises(TopUpOrderNotFound):
        selectors.topup_order_get(order_no=order.order_no, user=stranger)
    assert list(selectors.topup_order_list_for_user(user=stranger)) == []
    assert list(selectors.topup_order_list_for_user(user=user, status="pending")) == [order]
    assert selectors.topup_order_get_by_id(order_id=order.pk) == order
