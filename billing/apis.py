"""The top-up HTTP API (``/api/v1/topups...``). Thin: parse, call one service or selector,
render. Only the caller's own orders are ever visible."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.models import User
from billing import pricing, selectors, services
from billing.errors import PaymentMethodUnavailable, TopUpNotAllowed
from billing.models import Refund, TopUpOrder, TopUpPackage
from billing.providers import provider_get
from config.errors import RateLimited
from config.ratelimit import Window
from wallet import money


def credits_text(micro: int) -> str:
    """Credits as an exact decimal string (``"103"``, ``"1.5"``) for JSON."""
    return format(money.micro_to_credits(micro).normalize(), "f")


def _quote_data(quote: pricing.Quote, package: TopUpPackage | None = None) -> dict[str, Any]:
    return {
        "package": package.code if package is not None else None,
        "amount": pricing.format_minor(quote.amount_minor),
        "amount_minor": quote.amount_minor,
        "currency": quote.currency,
        "base_micro": quote.base_micro,
        "bonus_micro": quote.bonus_micro,
        "total_micro": quote.total_micro,
        "base_credits": credits_text(quote.base_micro),
        "bonus_credits": credits_text(quote.bonus_micro),
        "total_credits": credits_text(quote.total_micro),
        "bonus_percent": format(quote.bonus_percent.normalize(), "f"),
        "credits_per_usd": format(Decimal(quote.credits_per_usd).normalize(), "f"),
    }


def _instructions(order: TopUpOrder) -> str:
    """How to pay a pending order of a provider staff confirm (bank transfer details)."""
    if order.status != TopUpOrder.Status.PENDING:
        return ""
    try:
        provider = provider_get(order.provider)
    except PaymentMethodUnavailable:  # a provider since removed from settings
        return ""
    if provider.confirms_automatically:
        return ""
    return provider.checkout_start(order=order).instructions


class OrderOutputSerializer(serializers.Serializer):
    """One order as its owner sees it (shared by every order endpoint)."""

    def to_representation(self, order: TopUpOrder) -> dict[str, Any]:
        payable = order.status in TopUpOrder.OPEN_STATUSES and (
            order.checkout_expires_at is None or order.checkout_expires_at > timezone.now()
        )
        granted = order.paid_lot_id is not None
        return {
            "order_no": order.order_no,
            "status": order.status,
            "under_review": order.is_flagged,
            "payment_method": order.payment_method,
            "provider": order.provider,
            "package": order.package.code if order.package_id and order.package else None,
            "amount": pricing.format_minor(order.amount_minor),
            "amount_minor": order.amount_minor,
            "currency": order.currency,
            "base_micro": order.base_micro,
            "bonus_micro": order.bonus_micro,
            "total_micro": order.total_micro,
            "base_credits": credits_text(order.base_micro),
            "bonus_credits": credits_text(order.bonus_micro),
            "total_credits": credits_text(order.total_micro),
            "bonus_percent": format(order.bonus_percent.normalize(), "f"),
            "credits_added_micro": order.total_micro if granted else 0,
            "refunded_amount": pricing.format_minor(order.refunded_amount_minor),
            "refunded_amount_minor": order.refunded_amount_minor,
            "failure_reason": order.failure_reason,
            "checkout_url": order.checkout_url if payable else "",
            "checkout_expires_at": order.checkout_expires_at,
            "instructions": _instructions(order),
            "created_at": order.created_at,
            "paid_at": order.paid_at,
            "completed_at": order.completed_at,
            "closed_at": order.closed_at,
        }


class TopUpQuoteApi(APIView):
    """``GET /api/v1/topups/quote?amount=100`` (or ``?package=pro``): the credits a top-up
    would give, before paying."""

    class InputSerializer(serializers.Serializer):
        amount = serializers.CharField(required=False, allow_blank=True, max_length=40)
        package = serializers.CharField(required=False, allow_blank=True, max_length=40)
        currency = serializers.CharField(required=False, allow_blank=True, max_length=8)

    def get(self, request: Request) -> Response:
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        quote, package = services.topup_quote(
            amount=data.get("amount") or None,
            package_code=data.get("package"),
            currency=data.get("currency"),
        )
        return Response(_quote_data(quote, package))


class TopUpPackageListApi(APIView):
    """``GET /api/v1/topups/packages``: presets with their quotes, the custom amount bounds
    and the bonus table, for the top-up page."""

    def get(self, request: Request) -> Response:
        currency = pricing.billing_currency()
        packages = []
        for package in selectors.package_list_active(currency=currency):
            quote = pricing.quote(amount_minor=package.amount_minor, currency=currency)
            packages.append(
                {
                    "code": package.code,
                    "name": package.name,
                    "kind": package.kind,
                    "description": package.description,
                    **_quote_data(quote, package),
                }
            )
        rules = [
            {
                "min_amount": pricing.format_minor(rule.min_amount_minor),
                "max_amount": (
                    pricing.format_minor(rule.max_amount_minor)
                    if rule.max_amount_minor is not None
                    else None
                ),
                "percent": format(rule.percent.normalize(), "f"),
            }
            for rule in selectors.bonus_rule_list_active(currency=currency)
        ]
        return Response(
            {
                "currency": currency,
                "custom_amount": {
                    "minimum": pricing.format_minor(pricing.limit_minor("min")),
                    "maximum": pricing.format_minor(pricing.limit_minor("max")),
                },
                "packages": [p for p in packages if p["kind"] == TopUpPackage.Kind.PACKAGE],
                "amounts": [p for p in packages if p["kind"] == TopUpPackage.Kind.AMOUNT],
                "bonus_rules": rules,
            }
        )


def _parse_moment(value: str, field: str) -> dt.datetime:
    """An ISO date (midnight UTC) or date-time; naive date-times are UTC."""
    try:
        moment = parse_datetime(value)
        day = parse_date(value) if moment is None else None
    except ValueError:
        moment = day = None
    if moment is None:
        if day is None:
            raise serializers.ValidationError({field: "Use an ISO date or date-time."})
        moment = dt.datetime.combine(day, dt.time.min)
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, dt.UTC)


class _Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 200


def create_window() -> Window:
    return Window(
        "topup-create",
        limit=settings.TOPUP_CREATE_LIMIT,
        seconds=settings.TOPUP_CREATE_WINDOW_SECONDS,
    )


class TopUpOrdersApi(APIView):
    """``GET /api/v1/topups``: the caller's orders (filters ``status``, ``created_after``,
    ``created_before``). ``POST /api/v1/topups``: create an order and its checkout."""

    class FilterSerializer(serializers.Serializer):
        status = serializers.CharField(required=False, allow_blank=True)
        created_after = serializers.CharField(required=False, allow_blank=True)
        created_before = serializers.CharField(required=False, allow_blank=True)

        def validate_status(self, value: str) -> list[str]:
            statuses = [s.strip() for s in value.split(",") if s.strip()]
            unknown = [s for s in statuses if s not in TopUpOrder.Status.values]
            if unknown:
                raise serializers.ValidationError(
                    f"Unknown status {', '.join(unknown)}; use {', '.join(TopUpOrder.Status)}."
                )
            return statuses

    class CreateInputSerializer(serializers.Serializer):
        amount = serializers.CharField(required=False, allow_blank=True, max_length=40)
        package = serializers.CharField(required=False, allow_blank=True, max_length=40)
        currency = serializers.CharField(required=False, allow_blank=True, max_length=8)
        payment_method = serializers.ChoiceField(
            choices=TopUpOrder.PaymentMethod.choices, default=TopUpOrder.PaymentMethod.CARD
        )
        organization = serializers.CharField(required=False, allow_blank=True, max_length=80)

    def get(self, request: Request) -> Response:
        user = request.user
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        orders = selectors.topup_order_list_for_user(
            user=user,
            status=data.get("status") or None,
            created_after=(
                _parse_moment(data["created_after"], "created_after")
                if data.get("created_after")
                else None
            ),
            created_before=(
                _parse_moment(data["created_before"], "created_before")
                if data.get("created_before")
                else None
            ),
        )
        paginator = _Pagination()
        page = paginator.paginate_queryset(orders, request, view=self)
        return paginator.get_paginated_response(OrderOutputSerializer(page, many=True).data)

    def post(self, request: Request) -> Response:
        user = request.user
        assert isinstance(user, User)  # IsAuthenticated
        window = create_window()
        subject = f"user:{user.pk}"
        if window.hit(subject) > window.limit:
            raise RateLimited(retry_after=window.retry_after(subject))
        body = self.CreateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        organization = None
        if data.get("organization"):
            organization = (
                account_selectors.organization_list_for_user(user=user)
                .filter(slug=data["organization"])
                .first()
            )
            if organization is None:
                raise TopUpNotAllowed(organization=data["organization"])
        key = request.headers.get("Idempotency-Key", "")
        replay = bool(key) and TopUpOrder.objects.filter(user=user, client_key=key).exists()
        order = services.topup_order_create(
            user=user,
            amount=data.get("amount") or None,
            package_code=data.get("package") or None,
            currency=data.get("currency"),
            payment_method=data["payment_method"],
            organization=organization,
            client_key=key,
        )
        return Response(
            OrderOutputSerializer(order).data,
            status=status.HTTP_200_OK if replay else status.HTTP_201_CREATED,
        )


class TopUpOrderDetailApi(APIView):
    """``GET /api/v1/topups/{order_no}``: one of the caller's orders (the return page polls
    it for the live status)."""

    def get(self, request: Request, order_no: str) -> Response:
        order = selectors.topup_order_get(order_no=order_no, user=request.user)
        return Response(OrderOutputSerializer(order).data)


class TopUpOrderCancelApi(APIView):
    """``POST /api/v1/topups/{order_no}/cancel``: give up an unpaid order."""

    def post(self, request: Request, order_no: str) -> Response:
        order = selectors.topup_order_get(order_no=order_no, user=request.user)
        order = services.order_cancel(order=order)
        return Response(OrderOutputSerializer(order).data)


class CanRefund(BasePermission):
    message = "Refunds are for staff with the billing refund permission."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(
            user
            and user.is_authenticated
            and user.is_staff
            and user.has_perm("billing.refund_topuporder")
        )


class RefundOutputSerializer(serializers.Serializer):
    def to_representation(self, refund: Refund) -> dict[str, Any]:
        return {
            "id": refund.pk,
            "order_no": refund.order.order_no,
            "order_status": refund.order.status,
            "status": refund.status,
            "source": refund.source,
            "amount": pricing.format_minor(refund.amount_minor),
            "amount_minor": refund.amount_minor,
            "currency": refund.currency,
            "paid_micro": refund.paid_micro,
            "bonus_micro": refund.bonus_micro,
            "credits_micro": refund.credits_micro,
            "provider_refund_id": refund.provider_refund_id,
            "reason": refund.reason,
            "created_at": refund.created_at,
            "completed_at": refund.completed_at,
        }


class TopUpRefundCreateApi(APIView):
    """``POST /api/v1/topups/{order_no}/refunds`` (staff): refund all or part of the unused
    credits of an order through its provider. Requires an ``Idempotency-Key``."""

    permission_classes = [IsAuthenticated, CanRefund]

    class InputSerializer(serializers.Serializer):
        amount = serializers.CharField(required=False, allow_blank=True, max_length=40)
        reason = serializers.CharField(max_length=2000)
        idempotency_key = serializers.CharField(required=False, allow_blank=True, max_length=200)

    def post(self, request: Request, order_no: str) -> Response:
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        order = selectors.topup_order_get(order_no=order_no)
        key = request.headers.get("Idempotency-Key") or data.get("idempotency_key") or ""
        amount = pricing.parse_amount(data["amount"]) if data.get("amount") else None
        replay = bool(key) and Refund.objects.filter(idempotency_key=key.strip()).exists()
        refund = services.refund_create(
            order=order,
            amount_minor=amount,
            idempotency_key=key,
            actor=request.user,
            reason=data["reason"],
            source=Refund.Source.API,
        )
        return Response(
            RefundOutputSerializer(refund).data,
            status=status.HTTP_200_OK if replay else status.HTTP_201_CREATED,
        )
