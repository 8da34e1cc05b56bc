"""Stripe: Checkout Sessions for one-time payments, refunds, signed webhooks.

Uses the official ``stripe`` library (``StripeClient``); ``STRIPE_API_BASE`` points it at a
local fake in tests. Every request carries an idempotency key derived from our own records,
so a retry after a timeout or a crash never creates a second session or refund.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import stripe
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from billing.errors import (
    PaymentProviderError,
    PaymentProviderUnavailable,
    WebhookPayloadInvalid,
    WebhookSignatureInvalid,
)
from billing.providers.base import (
    CheckoutStart,
    NoticeKind,
    PaymentNotice,
    PaymentProvider,
    ProviderRefund,
    assert_no_transaction,
)
from wallet import money

if TYPE_CHECKING:
    from billing.models import TopUpOrder

logger = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _client_for(api_key: str, api_base: str, timeout: int, retries: int) -> stripe.StripeClient:
    # httpx (a runtime dependency already) gives a real timeout; the library's urllib
    # fallback would wait on a hung connection for as long as the socket allows.
    http_client = stripe.HTTPXClient(timeout=timeout, allow_sync_methods=True)
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        http_client=http_client,
        max_network_retries=retries,
    )


def _ts(value: object) -> dt.datetime | None:
    if not isinstance(value, int):
        return None
    return dt.datetime.fromtimestamp(value, tz=dt.UTC)


def _id(value: object) -> str | None:
    """A Stripe reference that may be an id or an expanded object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if value else None


def _metadata_order(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("order_no") or obj.get("client_reference_id") or "")


class StripeProvider(PaymentProvider):
    name = "stripe"
    payment_method = "card"

    def is_available(self) -> bool:
        return bool(settings.STRIPE_SECRET_KEY)

    # --- Calls -----------------------------------------------------------------------

    def _client(self) -> stripe.StripeClient:
        assert_no_transaction()
        if not settings.STRIPE_SECRET_KEY:
            raise PaymentProviderUnavailable("Stripe is not configured (STRIPE_SECRET_KEY).")
        return _client_for(
            settings.STRIPE_SECRET_KEY,
            settings.STRIPE_API_BASE,
            settings.STRIPE_TIMEOUT_SECONDS,
            settings.STRIPE_MAX_NETWORK_RETRIES,
        )

    def _call(self, call: Callable[[stripe.StripeClient], Any]) -> dict[str, Any]:
        try:
            result = call(self._client())
        except stripe.StripeError as exc:
            status = exc.http_status
            detail: dict[str, Any] = {
                "provider": self.name,
                "provider_code": exc.code,
                "http_status": status,
            }
            message = exc.user_message or str(exc) or "Stripe error"
            # No answer, a server error, a rate limit or a lock conflict: the request may or
            # may not have happened; the same idempotency key makes a retry safe.
            if status is None or status >= 500 or status in (409, 429):
                logger.warning("Stripe unavailable: %s", message)
                raise PaymentProviderUnavailable(None, **detail) from exc
            logger.error("Stripe refused the request: %s", message)
            raise PaymentProviderError(f"Stripe refused the request: {message}", **detail) from exc
        return dict(result.to_dict())

    # --- Checkout --------------------------------------------------------------------

    def _urls(self, order: TopUpOrder) -> tuple[str, str]:
        site = settings.SITE_URL.rstrip("/")
        return (
            f"{site}{reverse('billing:return')}?order={order.order_no}",
            f"{site}{reverse('billing:cancel')}?order={order.order_no}",
        )

    def checkout_start(self, *, order: TopUpOrder) -> CheckoutStart:
        success_url, cancel_url = self._urls(order)
        # Stripe accepts 30 minutes to 24 hours; keep a minute's margin at both ends.
        minutes = min(max(settings.STRIPE_CHECKOUT_EXPIRY_MINUTES, 31), 24 * 60 - 1)
        expires_at = timezone.now() + dt.timedelta(minutes=minutes)
        credits = money.format_credits(order.total_micro)
        name = f"{credits} credits"
        if order.bonus_micro:
            name += f" (incl. {money.format_credits(order.bonus_micro)} bonus)"
        params: dict[str, Any] = {
            "mode": "payment",
            "client_reference_id": order.order_no,
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": order.currency,
                        "unit_amount": order.amount_minor,
                        "product_data": {"name": name, "description": f"Order {order.order_no}"},
                    },
                }
            ],
            "metadata": {"order_no": order.order_no},
            "payment_intent_data": {"metadata": {"order_no": order.order_no}},
            "success_url": success_url,
            "cancel_url": cancel_url,
            "expires_at": int(expires_at.timestamp()),
        }
        email = getattr(order.user, "email", "")
        if email:
            params["customer_email"] = email
        session = self._call(
            lambda client: client.v1.checkout.sessions.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"topup-checkout-{order.order_no}"},
            )
        )
        return CheckoutStart(
            session_id=str(session["id"]),
            url=str(session.get("url") or ""),
            expires_at=_ts(session.get("expires_at")) or expires_at,
        )

    def checkout_fetch(self, *, order: TopUpOrder) -> PaymentNotice | None:
        if not order.provider_session_id:
            return None
        session_id = order.provider_session_id
        session = self._call(lambda client: client.v1.checkout.sessions.retrieve(session_id))
        return self._session_notice(session)

    def checkout_cancel(self, *, order: TopUpOrder) -> PaymentNotice | None:
        if not order.provider_session_id:
            return None
        session_id = order.provider_session_id
        try:
            session = self._call(lambda client: client.v1.checkout.sessions.expire(session_id))
        except PaymentProviderError:
            # Only open sessions can be expired: it was paid or expired meanwhile.
            return self.checkout_fetch(order=order)
        return self._session_notice(session)

    # --- Refunds ---------------------------------------------------------------------

    def refund_create(
        self, *, order: TopUpOrder, amount_minor: int, idempotency_key: str, reason: str = ""
    ) -> ProviderRefund:
        if not order.provider_payment_id:
            raise PaymentProviderError("The order has no Stripe payment to refund.")
        params: dict[str, Any] = {
            "payment_intent": order.provider_payment_id,
            "amount": amount_minor,
            "reason": "requested_by_customer",
            "metadata": {"order_no": order.order_no, "refund_key": idempotency_key[:500]},
        }
        refund = self._call(
            lambda client: client.v1.refunds.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"topup-{idempotency_key}"},
            )
        )
        status = str(refund.get("status") or "pending")
        if status in ("failed", "canceled"):
            status = "failed"
        elif status != "succeeded":
            status = "pending"
        return ProviderRefund(refund_id=str(refund["id"]), status=status)

    # --- Webhooks --------------------------------------------------------------------

    def webhook_event(self, *, payload: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """Verify ``Stripe-Signature`` (HMAC-SHA256 of ``"<t>.<raw body>"`` with the endpoint
        secret; timestamps older than the tolerance are refused) and parse the event."""
        secret = settings.STRIPE_WEBHOOK_SECRET
        if not secret:
            raise WebhookSignatureInvalid("STRIPE_WEBHOOK_SECRET is not configured.")
        try:
            stripe.WebhookSignature.verify_header(
                payload,
                headers.get("Stripe-Signature"),
                secret,
                tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
            )
        except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
            raise WebhookSignatureInvalid(str(exc)) from exc
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise WebhookPayloadInvalid("The body is not JSON.") from exc
        if (
            not isinstance(event, dict)
            or not str(event.get("id") or "").startswith("evt_")
            or not isinstance(event.get("type"), str)
            or not isinstance((event.get("data") or {}).get("object"), dict)
        ):
            raise WebhookPayloadInvalid()
        return event

    def webhook_notice(self, *, event: Mapping[str, Any]) -> PaymentNotice | None:
        obj: Mapping[str, Any] = event["data"]["object"]
        kind = event["type"]
        if kind in (
            "checkout.session.completed",
            "checkout.session.async_payment_succeeded",
            "checkout.session.expired",
        ):
            return self._session_notice(obj)
        if kind == "checkout.session.async_payment_failed":
            return replace(
                self._session_notice(obj),
                kind=NoticeKind.FAILED,
                failure_reason="The bank payment failed.",
            )
        if kind == "payment_intent.payment_failed":
            error = obj.get("last_payment_error") or {}
            return PaymentNotice(
                kind=NoticeKind.FAILED,
                order_no=_metadata_order(obj),
                payment_id=_id(obj.get("id")),
                amount_minor=obj.get("amount"),
                currency=str(obj.get("currency") or ""),
                failure_reason=str(error.get("message") or error.get("code") or "Payment failed"),
            )
        if kind == "charge.refunded":
            return PaymentNotice(
                kind=NoticeKind.REFUNDED,
                order_no=_metadata_order(obj),
                payment_id=_id(obj.get("payment_intent")),
                amount_minor=obj.get("amount"),
                currency=str(obj.get("currency") or ""),
                refunded_total_minor=int(obj.get("amount_refunded") or 0),
            )
        return None

    @staticmethod
    def _session_notice(session: Mapping[str, Any]) -> PaymentNotice:
        status = session.get("status")
        payment_status = session.get("payment_status")
        if status == "complete" and payment_status in ("paid", "no_payment_required"):
            kind = NoticeKind.PAID
        elif status == "complete":
            kind = NoticeKind.PROCESSING
        elif status == "expired":
            kind = NoticeKind.EXPIRED
        else:
            kind = NoticeKind.OPEN
        amount = session.get("amount_total")
        return PaymentNotice(
            kind=kind,
            order_no=_metadata_order(session),
            session_id=_id(session.get("id")),
            payment_id=_id(session.get("payment_intent")),
            amount_minor=amount if isinstance(amount, int) else None,
            currency=str(session.get("currency") or "").lower(),
        )
