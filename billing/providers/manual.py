"""Bank transfer, confirmed by staff in the admin once the money is on the account.

Nothing external is called: the customer is shown instructions quoting the order number,
staff confirm the payment (``billing.services.order_confirm_manual_payment``), and refunds
are recorded here and paid back by staff through the bank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings

from billing import pricing
from billing.providers.base import CheckoutStart, PaymentProvider, ProviderRefund

if TYPE_CHECKING:
    from billing.models import TopUpOrder


class ManualProvider(PaymentProvider):
    name = "manual"
    payment_method = "bank_transfer"
    confirms_automatically = False

    def is_available(self) -> bool:
        return bool(settings.BILLING_MANUAL_PAYMENTS_ENABLED)

    def checkout_start(self, *, order: TopUpOrder) -> CheckoutStart:
        instructions = settings.BILLING_MANUAL_INSTRUCTIONS.format(
            amount=pricing.format_minor(order.amount_minor),
            currency=order.currency.upper(),
            order_no=order.order_no,
        )
        return CheckoutStart(session_id=None, instructions=instructions)

    def refund_create(
        self, *, order: TopUpOrder, amount_minor: int, idempotency_key: str, reason: str = ""
    ) -> ProviderRefund:
        # Staff send the money back by bank transfer; the record is the refund.
        return ProviderRefund(refund_id=f"manual-{idempotency_key}"[:255], status="succeeded")
