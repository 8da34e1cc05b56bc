"""The interface every payment provider implements.

Providers talk to the outside world only; they never touch the database. Every method may be
slow and is called OUTSIDE any database transaction (``assert_no_transaction``). Failures are
reported as ``PaymentProviderError`` (a definite refusal: nothing happened) or
``PaymentProviderUnavailable`` (the outcome is unknown: retry with the same idempotency key).
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from django.db import connection

from billing.errors import WebhookSignatureInvalid

if TYPE_CHECKING:
    from billing.models import TopUpOrder


def assert_no_transaction() -> None:
    """Refuse to call a provider while a database transaction is open: a slow provider must
    never hold row locks, and a rolled-back transaction must not leave a payment behind.
    (Atomic blocks opened by Django's test case wrapper do not count.)"""
    if any(not getattr(block, "_from_testcase", False) for block in connection.atomic_blocks):
        raise RuntimeError("A payment provider was called inside a database transaction.")


@dataclass(frozen=True)
class CheckoutStart:
    """Where the customer goes to pay (or what they must do, for a manual provider)."""

    session_id: str | None
    url: str = ""
    expires_at: dt.datetime | None = None
    instructions: str = ""


class NoticeKind(StrEnum):
    OPEN = "open"  # nothing paid yet, still payable
    PROCESSING = "processing"  # checkout finished, the money is on its way (bank debits)
    PAID = "paid"
    FAILED = "failed"  # a payment attempt failed (the session may still be payable)
    EXPIRED = "expired"  # can no longer be paid
    REFUNDED = "refunded"  # money went back (``refunded_total_minor`` is cumulative)


@dataclass(frozen=True)
class PaymentNotice:
    """What a provider says about one order's payment, in provider-neutral terms; built from
    a webhook event or from asking the provider (reconciliation)."""

    kind: NoticeKind
    order_no: str = ""
    session_id: str | None = None
    payment_id: str | None = None
    amount_minor: int | None = None
    currency: str = ""
    failure_reason: str = ""
    refunded_total_minor: int | None = None


@dataclass(frozen=True)
class ProviderRefund:
    refund_id: str
    status: str  # "succeeded", "pending" (accepted, settling) or "failed"


class PaymentProvider(ABC):
    name: ClassVar[str]
    payment_method: ClassVar[str]
    # Whether the provider tells us about payments by itself (webhooks, reconciliation) or
    # staff confirm them by hand.
    confirms_automatically: ClassVar[bool] = True

    def is_available(self) -> bool:
        return True

    @abstractmethod
    def checkout_start(self, *, order: TopUpOrder) -> CheckoutStart:
        """Open a payment for the order. Must be idempotent per order (a retry after a crash
        returns the same checkout)."""

    def checkout_fetch(self, *, order: TopUpOrder) -> PaymentNotice | None:
        """The current state of the order's payment, or None if the provider cannot say."""
        return None

    def checkout_cancel(self, *, order: TopUpOrder) -> PaymentNotice | None:
        """Stop the order's checkout from being paid; returns the resulting state."""
        return None

    @abstractmethod
    def refund_create(
        self, *, order: TopUpOrder, amount_minor: int, idempotency_key: str, reason: str = ""
    ) -> ProviderRefund:
        """Send ``amount_minor`` back to the payer. The same key must never refund twice."""

    def webhook_event(self, *, payload: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """Verify a webhook's signature on the raw body and return the parsed event with at
        least ``id`` and ``type``. Raises ``WebhookSignatureInvalid``."""
        raise WebhookSignatureInvalid("This provider does not send webhooks.")

    def webhook_notice(self, *, event: Mapping[str, Any]) -> PaymentNotice | None:
        """Translate a verified event into a notice; None for event types we do not handle."""
        return None
