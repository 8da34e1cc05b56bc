"""The Stripe webhook endpoint and the plain pages Stripe Checkout returns the customer to."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from billing import pricing, selectors, services
from billing.errors import (
    InvalidOrderTransition,
    PaymentProviderError,
    PaymentProviderUnavailable,
    TopUpOrderNotFound,
    WebhookPayloadInvalid,
    WebhookSignatureInvalid,
)
from billing.models import TopUpOrder
from config.ratelimit import Window

logger = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    """Stripe's events. The signature is checked on the raw body before anything is
    stored; a verified event is stored once under its id and processed. 2xx for processed,
    ignored and duplicate events; 500 when processing failed (Stripe retries it)."""
    try:
        result = services.webhook_receive(
            provider_name="stripe", payload=request.body, headers=request.headers
        )
    except (WebhookSignatureInvalid, WebhookPayloadInvalid) as exc:
        logger.warning("Refused a Stripe webhook: %s", exc.message)
        return JsonResponse({"error": exc.as_dict()}, status=400)
    event = result.event
    return JsonResponse(
        {
            "received": True,
            "event_id": event.event_id,
            "status": event.status,
            "duplicate": result.duplicate,
        },
        status=200 if result.ok else 500,
    )


def _own_order(request: HttpRequest) -> TopUpOrder:
    try:
        return selectors.topup_order_get(
            order_no=request.GET.get("order", "") or request.POST.get("order", ""),
            user=request.user,
        )
    except TopUpOrderNotFound as exc:
        raise Http404("No such order.") from exc


# Coming back from Checkout asks Stripe once about the order (the webhook may be slower than
# the customer); at most once per order per window, so reloading the page cannot hammer Stripe.
_return_sync = Window("topup-return-sync", limit=1, seconds=10)


@login_required
def checkout_return(request: HttpRequest) -> HttpResponse:
    order = _own_order(request)
    if order.status == TopUpOrder.Status.PENDING and _return_sync.hit(order.order_no) == 1:
        try:
            order = services.order_sync(order=order)
        except (PaymentProviderError, PaymentProviderUnavailable):
            logger.warning("Could not ask the provider about %s", order.order_no)
    return render(
        request,
        "billing/return.html",
        {
            "order": order,
            "amount": pricing.format_minor(order.amount_minor),
            "api_url": reverse("topup-detail", args=[order.order_no]),
            "final": order.status not in TopUpOrder.OPEN_STATUSES,
            "instructions": selectors.topup_order_instructions(order=order),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def checkout_cancel(request: HttpRequest) -> HttpResponse:
    order = _own_order(request)
    if request.method == "POST":
        try:
            order = services.order_cancel(order=order)
        except InvalidOrderTransition:
            messages.info(request, "This order can no longer be cancelled.")
        except (PaymentProviderError, PaymentProviderUnavailable):
            messages.error(request, "We could not reach the payment provider. Please retry.")
        else:
            if order.status == TopUpOrder.Status.CANCELLED:
                messages.success(request, "The order was cancelled.")
        return redirect(f"{reverse('billing:return')}?order={order.order_no}")
    return render(
        request,
        "billing/cancel.html",
        {
            "order": order,
            "amount": pricing.format_minor(order.amount_minor),
            "can_cancel": order.status in TopUpOrder.OPEN_STATUSES,
        },
    )
