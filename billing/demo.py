"""Demo data for ``manage.py seed_demo``: one completed top-up (a confirmed bank transfer, so
no payment provider is needed). The packages and bonus rules come from the migrations."""

from __future__ import annotations

from typing import Any

from billing import services
from billing.models import TopUpOrder


def billing_demo_seed(*, user: Any, staff: Any) -> TopUpOrder:
    """Idempotent: the order is created once (keyed ``seed-demo``) and confirmed once."""
    order = services.topup_order_create(
        user=user,
        amount="100",
        payment_method=TopUpOrder.PaymentMethod.BANK_TRANSFER,
        client_key="seed-demo",
    )
    if order.status == TopUpOrder.Status.PENDING:
        order = services.order_confirm_manual_payment(order=order, actor=staff)
    return order
