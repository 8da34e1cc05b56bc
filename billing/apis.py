"""The top-up HTTP API (``/api/v1/topups...``). Thin: parse, call one service or selector,
render. Only the caller's own orders are ever visible."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.models import User
from billing import pricing, selectors, services
from billing.errors import TopUpNotAllowed
from billing.models import Refund, TopUpOrder, TopUpPackage
from config.errors import RateLimited
from config.ratelimit import Window
from wallet import money


def credits_text(micro: int) -> str:
    """Credits as an exact decimal string (``"103"``, ``"1.5"``) for JSON."""
    return format(money.micro_to_credits(micro).normalize(), "f")


@extend_schema_field(OpenApiTypes.STR)
class MoneyField(serializers.Field):
    """Minor units as a decimal string of major units: ``10000`` -> ``"100.00"``."""

    def to_representation(self, value: int) -> str:
        return pricing.format_minor(value)


@extend_schema_field(OpenApiTypes.STR)
class CreditsField(serializers.Field):
    """µcr as an exact decimal string of credits: ``103000000`` -> ``"103"``."""

    def to_representation(self, value: int) -> str:
        return credits_text(value)


@extend_schema_field(OpenApiTypes.STR)
class DecimalTextField(serializers.Field):
    def to_representation(self, value: Decimal) -> str:
        return format(Decimal(value).normalize(), "f")


class CreditsBreakdownSerializer(serializers.Serializer):
    """What is paid and what it buys: shared by quotes, presets and orders."""

    amount = MoneyField(source="amount_minor")
    amount_minor = serializers.IntegerField()
    currency = serializers.CharField()
    base_micro = serializers.IntegerField()
    bonus_micro = serializers.IntegerField()
    total_micro = serializers.IntegerField()
    base_credits = CreditsField(source="base_micro")
    bonus_credits = CreditsField(source="bonus_micro")
    total_credits = CreditsField(source="total_micro")
    bonus_percent = DecimalTextField()


class QuoteOutputSerializer(CreditsBreakdownSerializer):
    package = serializers.CharField(allow_null=True)
    credits_per_usd = DecimalTextField()


def _quote_data(quote: pricing.Quote, package: TopUpPackage | None = None) -> dict[str, Any]:
    return {
        **asdict(quote),
        "total_micro": quote.total_micro,
        "package": package.code if package is not None else None,
    }


class OrderOutputSerializer(CreditsBreakdownSerializer):
    """One order as its owner sees it (shared by every order endpoint)."""

    order_no = serializers.CharField()
    status = serializers.ChoiceField(choices=TopUpOrder.Status.choices)
    under_review = serializers.BooleanField(
        source="is_flagged", help_text="Paid, but held for staff review; no credits yet."
    )
    payment_method = serializers.CharField()
    provider = serializers.CharField()
    package = serializers.CharField(source="package.code", allow_null=True)
    credits_added_micro = serializers.SerializerMethodField()
    refunded_amount = MoneyField(source="refunded_amount_minor")
    refunded_amount_minor = serializers.IntegerField()
    failure_reason = serializers.CharField()
    checkout_url = serializers.SerializerMethodField()
    checkout_expires_at = serializers.DateTimeField(allow_null=True)
    instructions = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    paid_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    closed_at = serializers.DateTimeField(allow_null=True)

    def get_credits_added_micro(self, order: TopUpOrder) -> int:
        return order.total_micro if order.paid_lot_id is not None else 0

    def get_checkout_url(self, order: TopUpOrder) -> str:
        payable = order.status in TopUpOrder.OPEN_STATUSES and (
            order.checkout_expires_at is None or order.checkout_expires_at > timezone.now()
        )
        return order.checkout_url if payable else ""

    def get_instructions(self, order: TopUpOrder) -> str:
        return selectors.topup_order_instructions(order=order)


class TopUpQuoteApi(APIView):
    """``GET /api/v1/topups/quote?amount=100`` (or ``?package=pro``): the credits a top-up
    would give, before paying."""

    class InputSerializer(serializers.Serializer):
        amount = serializers.CharField(required=False, allow_blank=True, max_length=40)
        package = serializers.CharField(required=False, allow_blank=True, max_length=40)
        currency = serializers.CharField(required=False, allow_blank=True, max_length=8)

    @extend_schema(
        operation_id="topups_quote",
        parameters=[InputSerializer],
        responses=QuoteOutputSerializer,
    )
    def get(self, request: Request) -> Response:
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        quote, package = services.topup_quote(
            amount=data.get("amount") or None,
            package_code=data.get("package"),
            currency=data.get("currency"),
        )
        return Response(QuoteOutputSerializer(_quote_data(quote, package)).data)


class PackageOutputSerializer(QuoteOutputSerializer):
    code = serializers.CharField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=TopUpPackage.Kind.choices)
    description = serializers.CharField()


class BonusRuleOutputSerializer(serializers.Serializer):
    min_amount = MoneyField(source="min_amount_minor")
    max_amount = MoneyField(source="max_amount_minor", allow_null=True)
    percent = DecimalTextField()


class CatalogueOutputSerializer(serializers.Serializer):
    currency = serializers.CharField()
    custom_amount = inline_serializer(
        "CustomAmountBounds", {"minimum": MoneyField(), "maximum": MoneyField()}
    )
    packages = PackageOutputSerializer(many=True)
    amounts = PackageOutputSerializer(many=True)
    bonus_rules = BonusRuleOutputSerializer(many=True)


class TopUpPackageListApi(APIView):
    """``GET /api/v1/topups/packages``: presets with their quotes, the custom amount bounds
    and the bonus table, for the top-up page."""

    @extend_schema(operation_id="topups_packages", responses=CatalogueOutputSerializer)
    def get(self, request: Request) -> Response:
        currency = pricing.billing_currency()
        presets = [
            {
                **_quote_data(pricing.quote(amount_minor=p.amount_minor, currency=currency), p),
                "code": p.code,
                "name": p.name,
                "kind": p.kind,
                "description": p.description,
            }
            for p in selectors.package_list_active(currency=currency)
        ]
        catalogue = {
            "currency": currency,
            "custom_amount": {
                "minimum": pricing.limit_minor("min"),
                "maximum": pricing.limit_minor("max"),
            },
            "packages": [p for p in presets if p["kind"] == TopUpPackage.Kind.PACKAGE],
            "amounts": [p for p in presets if p["kind"] == TopUpPackage.Kind.AMOUNT],
            "bonus_rules": selectors.bonus_rule_list_active(currency=currency),
        }
        return Response(CatalogueOutputSerializer(catalogue).data)


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


_IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="A retry with the same key returns the first result instead of repeating it.",
)


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

    @extend_schema(
        operation_id="topups_list",
        parameters=[
            FilterSerializer,
            OpenApiParameter("limit", int, description="At most 200; default 50."),
            OpenApiParameter("offset", int),
        ],
        responses=inline_serializer(
            "TopUpOrderPage",
            {
                "count": serializers.IntegerField(),
                "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True),
                "results": OrderOutputSerializer(many=True),
            },
        ),
    )
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

    @extend_schema(
        operation_id="topups_create",
        parameters=[_IDEMPOTENCY_KEY],
        request=CreateInputSerializer,
        responses={201: OrderOutputSerializer, 200: OrderOutputSerializer},
    )
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

    @extend_schema(operation_id="topups_retrieve", responses=OrderOutputSerializer)
    def get(self, request: Request, order_no: str) -> Response:
        order = selectors.topup_order_get(order_no=order_no, user=request.user)
        return Response(OrderOutputSerializer(order).data)


class TopUpOrderCancelApi(APIView):
    """``POST /api/v1/topups/{order_no}/cancel``: give up an unpaid order."""

    @extend_schema(operation_id="topups_cancel", request=None, responses=OrderOutputSerializer)
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
    id = serializers.IntegerField()
    order_no = serializers.CharField(source="order.order_no")
    order_status = serializers.CharField(source="order.status")
    status = serializers.ChoiceField(choices=Refund.Status.choices)
    # A declared field named like Field.source (the metaclass moves it out of the class).
    source = serializers.ChoiceField(choices=Refund.Source.choices)  # type: ignore[assignment]
    amount = MoneyField(source="amount_minor")
    amount_minor = serializers.IntegerField()
    currency = serializers.CharField()
    paid_micro = serializers.IntegerField()
    bonus_micro = serializers.IntegerField()
    credits_micro = serializers.IntegerField()
    provider_refund_id = serializers.CharField(allow_null=True)
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)


class TopUpRefundCreateApi(APIView):
    """``POST /api/v1/topups/{order_no}/refunds`` (staff): refund all or part of the unused
    credits of an order through its provider. Requires an ``Idempotency-Key``."""

    permission_classes = [IsAuthenticated, CanRefund]

    class InputSerializer(serializers.Serializer):
        amount = serializers.CharField(required=False, allow_blank=True, max_length=40)
        reason = serializers.CharField(max_length=2000)
        idempotency_key = serializers.CharField(required=False, allow_blank=True, max_length=200)

    @extend_schema(
        operation_id="topups_refund_create",
        parameters=[_IDEMPOTENCY_KEY],
        request=InputSerializer,
        responses={201: RefundOutputSerializer, 200: RefundOutputSerializer},
    )
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
