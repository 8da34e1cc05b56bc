"""The metering and read APIs (``/api/v1/...``): thin views over ``usage.services`` and the
selectors. Every view names the token scope it needs (see ``accounts.authentication``);
amounts are credits as decimal strings with six places (exact: 1 credit = 10^6 µcr)."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import (
    client_ip,
    request_token,
    request_token_required,
    request_wallet_id,
)
from accounts.errors import NotAllowed
from accounts.middleware import HEADER as CREDITS_REMAINING
from accounts.middleware import credits_remaining_header
from accounts.models import ApiToken
from config.fastinput import validated
from config.openapi import error_responses
from usage import pricing, selectors, services
from usage.export import UsageExport, UsageJsonLinesExport
from usage.models import UsageContent, UsageRecord
from wallet import money
from wallet import selectors as wallet_selectors
from wallet.models import LedgerEntry

_MAX_TOKENS = settings.METERING_MAX_TOKENS
_REPLAYED = "Idempotent-Replayed"
_AUTHORIZE_EXAMPLE = OpenApiExample(
    "Chat completion",
    request_only=True,
    value={
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarize the attached contract."},
        ],
        "max_tokens": 512,
        "request_id": "gw-7f3a9c",
        "endpoint": "chat.completions",
    },
)
_USAGE_EXAMPLE = {
    "input_tokens": 1200,
    "cached_input_tokens": 1000,
    "output_tokens": 310,
    "reasoning_tokens": 0,
    "latency_ms": 1840,
    "status": "succeeded",
    "metadata": {"retries": 0, "tools": ["web_search"], "iterations": 2, "region": "us-east"},
}
_CAPTURE_EXAMPLE = OpenApiExample("Actual usage", request_only=True, value=_USAGE_EXAMPLE)
_ONE_SHOT_EXAMPLE = OpenApiExample(
    "A finished request",
    request_only=True,
    value={"model": "gpt-4o-mini", "endpoint": "chat.completions", **_USAGE_EXAMPLE},
)
_IDEMPOTENCY_TEXT = (
    "Your id for this request (at most 150 characters): a retry with the same key and body "
    "returns the first result; another body with it is a 409."
)
_IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER, description=_IDEMPOTENCY_TEXT
)
_IDEMPOTENCY_HEADER_REQUIRED = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=True,
    pattern="^[!-~]{1,150}$",
    description=_IDEMPOTENCY_TEXT,
)


class CreditsField(serializers.CharField):
    """µcr rendered as credits with six decimals, e.g. ``"12.500000"``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        kwargs.setdefault("help_text", "Credits, as a decimal string with six places.")
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str:
        return f"{money.micro_to_credits(value):.6f}"


def _usd(places: int, **kwargs: Any) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=32, decimal_places=places, read_only=True, **kwargs)


def _replayable(
    data: Any, *, replayed: bool, created_status: int, available_after: int | None = None
) -> Response:
    response = Response(data, status=status.HTTP_200_OK if replayed else created_status)
    if replayed:
        response[_REPLAYED] = "true"
    if available_after is not None:
        # Reported by the wallet operation itself; the middleware would otherwise read it.
        response[CREDITS_REMAINING] = credits_remaining_header(available_after)
    return response


class NewestFirst(CursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500


def page_of(item: type[serializers.Serializer], name: str) -> serializers.Serializer:
    """OpenAPI shape of one page of ``item``s under cursor pagination."""
    return inline_serializer(
        name=name,
        fields={
            "next": serializers.URLField(allow_null=True, help_text="The next page, or null."),
            "previous": serializers.URLField(allow_null=True),
            "results": item(many=True),
        },
    )


_PAGE_PARAMETERS = [
    OpenApiParameter("cursor", OpenApiTypes.STR, description="From next/previous."),
    OpenApiParameter("limit", OpenApiTypes.INT, description="Page size (at most 500)."),
]


# --- Shared serializers ---------------------------------------------------------------


@extend_schema_serializer(component_name="UsageMetadata")
class MetadataSerializer(serializers.Serializer):
    retries = serializers.IntegerField(min_value=0, max_value=1000, required=False)
    iterations = serializers.IntegerField(min_value=0, max_value=100_000, required=False)
    tools = serializers.ListField(
        child=serializers.CharField(max_length=100), max_length=100, required=False
    )
    region = serializers.CharField(max_length=64, required=False)
    extra = serializers.DictField(
        required=False, help_text="Anything else, as a JSON object of at most 4 KB."
    )

    def validate_extra(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, default=str)) > 4096:
            raise serializers.ValidationError("At most 4 KB of extra metadata.")
        if _has_nul(value):
            # PostgreSQL's jsonb cannot hold U+0000 (the insert would fail).
            raise serializers.ValidationError("Null characters are not allowed.")
        return value


def _has_nul(value: Any) -> bool:
    """Whether a JSON value holds U+0000 in any key or string (iterative: any depth)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


@extend_schema_serializer(component_name="UsageContentInput")
class ContentInputSerializer(serializers.Serializer):
    """What the request said and answered. Kept only when content logging is on for the
    token or its organization (each part cut to CONTENT_LOG_MAX_CHARS); otherwise
    ignored and never stored."""

    system = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, default=""
    )
    messages = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        max_length=100_000,
        help_text="The prompt messages (OpenAI format); system messages are moved to system.",
    )
    tools = serializers.ListField(child=serializers.JSONField(), required=False, max_length=1000)
    tool_calls = serializers.ListField(
        child=serializers.JSONField(), required=False, max_length=1000
    )
    response = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, default=""
    )
    context_bytes = serializers.IntegerField(
        min_value=0,
        required=False,
        help_text="Size of the request's context in bytes; computed when absent.",
    )


def content_log(data: Mapping[str, Any] | None) -> services.ContentLog | None:
    """The service's view of validated ``ContentInputSerializer`` data."""
    if not data:
        return None
    split = services.ContentLog.from_chat(
        messages=data.get("messages"),
        tools=data.get("tools"),
        tool_calls=data.get("tool_calls"),
        response=data.get("response", ""),
    )
    system = "\n\n".join(part for part in (data.get("system", ""), split.system) if part)
    return services.ContentLog(
        system=system,
        messages=split.messages,
        tools=split.tools,
        tool_calls=split.tool_calls,
        response=split.response,
        context_bytes=data.get("context_bytes"),
    )


@extend_schema_serializer(component_name="UsageReport")
class UsageInputSerializer(serializers.Serializer):
    """Actual usage of one request, as the gateway measured it."""

    input_tokens = serializers.IntegerField(min_value=0, max_value=_MAX_TOKENS, default=0)
    cached_input_tokens = serializers.IntegerField(
        min_value=0,
        max_value=_MAX_TOKENS,
        default=0,
        help_text="The part of input_tokens served from the prompt cache.",
    )
    output_tokens = serializers.IntegerField(
        min_value=0,
        max_value=_MAX_TOKENS,
        default=0,
        help_text="Visible output tokens, not counting reasoning tokens.",
    )
    reasoning_tokens = serializers.IntegerField(min_value=0, max_value=_MAX_TOKENS, default=0)
    task_units = serializers.DecimalField(
        max_digits=18,
        decimal_places=6,
        min_value=Decimal(0),
        max_value=Decimal(_MAX_TOKENS),
        default=Decimal(0),
        help_text="Images, seconds or minutes for models priced per unit.",
    )
    status = serializers.ChoiceField(
        choices=UsageRecord.Status.choices, default=UsageRecord.Status.SUCCEEDED
    )
    error = serializers.CharField(max_length=1000, allow_blank=True, default="")
    latency_ms = serializers.IntegerField(min_value=0, max_value=86_400_000, required=False)
    started_at = serializers.DateTimeField(required=False)
    finished_at = serializers.DateTimeField(required=False)
    estimated = serializers.BooleanField(
        default=False, help_text="True when the counts are the gateway's own estimate."
    )
    metadata = MetadataSerializer(required=False)
    content = ContentInputSerializer(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["cached_input_tokens"] > attrs["input_tokens"]:
            raise serializers.ValidationError(
                {"cached_input_tokens": "Cached input tokens cannot exceed input_tokens."}
            )
        started, finished = attrs.get("started_at"), attrs.get("finished_at")
        if started and finished and finished < started:
            raise serializers.ValidationError({"finished_at": "Must not be before started_at."})
        return attrs

    def report(self) -> services.UsageReport:
        return usage_report(self.validated_data)


def usage_report(data: Mapping[str, Any]) -> services.UsageReport:
    """The service's view of validated ``UsageInputSerializer`` data."""
    return services.UsageReport(
        usage=pricing.Usage(
            input_tokens=data["input_tokens"],
            output_tokens=data["output_tokens"],
            cached_input_tokens=data["cached_input_tokens"],
            reasoning_tokens=data["reasoning_tokens"],
            task_units=data["task_units"],
        ),
        status=data["status"],
        error=data["error"],
        latency_ms=data.get("latency_ms"),
        started_at=data.get("started_at"),
        finished_at=data.get("finished_at"),
        estimated=data["estimated"],
        metadata=dict(data.get("metadata") or {}),
    )


@extend_schema_serializer(component_name="UsageCounts")
class _UsageCountsSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    task_units = serializers.DecimalField(max_digits=18, decimal_places=6)
    unit_name = serializers.CharField()


@extend_schema_serializer(component_name="UsagePricing")
class _PricingSerializer(serializers.Serializer):
    price_id = serializers.IntegerField(help_text="The catalog version used.")
    input_usd_per_mtok = _usd(6)
    cached_input_usd_per_mtok = _usd(6)
    output_usd_per_mtok = _usd(6)
    reasoning_usd_per_mtok = _usd(6)
    request_usd = _usd(8)
    unit_usd = _usd(8)
    markup = serializers.DecimalField(max_digits=12, decimal_places=6)
    tier_rate = serializers.DecimalField(max_digits=8, decimal_places=4)
    credits_per_usd = serializers.DecimalField(max_digits=12, decimal_places=6)
    usd_cost = _usd(14, help_text="Exact cost at the provider's prices, in USD.")


@extend_schema_serializer(component_name="UsageRecord")
class UsageRecordOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    request_id = serializers.CharField()
    authorization_id = serializers.IntegerField(allow_null=True)
    model = serializers.CharField()
    endpoint = serializers.CharField()
    status = serializers.CharField()
    error = serializers.CharField()
    token_id = serializers.IntegerField(allow_null=True)
    token_group = serializers.CharField(source="token_group.name", allow_null=True)
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField()
    latency_ms = serializers.IntegerField(allow_null=True)
    usage = _UsageCountsSerializer(source="*")
    pricing = _PricingSerializer(source="*")
    cost = CreditsField(
        source="cost_micro",
        help_text="ceil(usd_cost x markup x credits_per_usd x tier_rate) in credits.",
    )
    charged = CreditsField(source="charged_micro", help_text="Credits taken from the wallet.")
    shortfall = CreditsField(
        source="shortfall_micro", help_text="Credits the wallet could not cover."
    )
    estimated = serializers.BooleanField()
    metadata = serializers.JSONField()
    created_at = serializers.DateTimeField()


@extend_schema_serializer(component_name="Authorization")
class AuthorizationOutputSerializer(serializers.Serializer):
    """Renders a ``services.AuthorizationResult``."""

    id = serializers.IntegerField(source="authorization.id")
    request_id = serializers.CharField(source="authorization.request_id")
    status = serializers.ChoiceField(choices=services.AUTHORIZATION_STATUSES)
    model = serializers.CharField(source="authorization.model")
    endpoint = serializers.CharField(source="authorization.endpoint")
    price_id = serializers.IntegerField(source="authorization.price_id")
    amount = CreditsField(
        source="authorization.amount_micro", help_text="Credits held for this request."
    )
    estimated_input_tokens = serializers.IntegerField(source="authorization.estimated_input_tokens")
    max_tokens = serializers.IntegerField(
        source="authorization.max_tokens", help_text="Output tokens reserved."
    )
    estimated_task_units = serializers.DecimalField(
        source="authorization.estimated_task_units", max_digits=18, decimal_places=6
    )
    tier_rate = serializers.DecimalField(
        source="authorization.tier_rate", max_digits=8, decimal_places=4
    )
    created_at = serializers.DateTimeField(source="authorization.created_at")
    expires_at = serializers.DateTimeField(source="authorization.expires_at")


# --- Payloads on the hot path ----------------------------------------------------------
# The metering endpoints answer hundreds of times a second, and a DRF serializer rebuilds
# (deep-copies) its fields on every use: these build the very same dicts directly. The
# serializers above stay the documented shape (OpenAPI), and a test checks that both
# render every field identically.


def _credits(micro: int) -> str:
    return f"{money.micro_to_credits(micro):.6f}"


def _decimal(value: Decimal, places: int) -> str:
    return format(value.quantize(Decimal(1).scaleb(-places)), "f")


def _timestamp(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def authorization_payload(result: services.AuthorizationResult) -> dict[str, Any]:
    a = result.authorization
    return {
        "id": a.pk,
        "request_id": a.request_id,
        "status": result.status,
        "model": a.model,
        "endpoint": a.endpoint,
        "price_id": a.price_id,
        "amount": _credits(a.amount_micro),
        "estimated_input_tokens": a.estimated_input_tokens,
        "max_tokens": a.max_tokens,
        "estimated_task_units": _decimal(a.estimated_task_units, 6),
        "tier_rate": _decimal(a.tier_rate, 4),
        "created_at": _timestamp(a.created_at),
        "expires_at": _timestamp(a.expires_at),
    }


def usage_record_payload(r: UsageRecord) -> dict[str, Any]:
    return {
        "id": r.pk,
        "request_id": r.request_id,
        "authorization_id": r.authorization_id,
        "model": r.model,
        "endpoint": r.endpoint,
        "status": r.status,
        "error": r.error,
        "token_id": r.token_id,
        "token_group": r.token_group.name if r.token_group is not None else None,
        "started_at": _timestamp(r.started_at),
        "finished_at": _timestamp(r.finished_at),
        "latency_ms": r.latency_ms,
        "usage": {
            "input_tokens": r.input_tokens,
            "cached_input_tokens": r.cached_input_tokens,
            "output_tokens": r.output_tokens,
            "reasoning_tokens": r.reasoning_tokens,
            "task_units": _decimal(r.task_units, 6),
            "unit_name": r.unit_name,
        },
        "pricing": {
            "price_id": r.price_id,
            "input_usd_per_mtok": _decimal(r.input_usd_per_mtok, 6),
            "cached_input_usd_per_mtok": _decimal(r.cached_input_usd_per_mtok, 6),
            "output_usd_per_mtok": _decimal(r.output_usd_per_mtok, 6),
            "reasoning_usd_per_mtok": _decimal(r.reasoning_usd_per_mtok, 6),
            "request_usd": _decimal(r.request_usd, 8),
            "unit_usd": _decimal(r.unit_usd, 8),
            "markup": _decimal(r.markup, 6),
            "tier_rate": _decimal(r.tier_rate, 4),
            "credits_per_usd": _decimal(r.credits_per_usd, 6),
            "usd_cost": _decimal(r.usd_cost, 14),
        },
        "cost": _credits(r.cost_micro),
        "charged": _credits(r.charged_micro),
        "shortfall": _credits(r.shortfall_micro),
        "estimated": r.estimated,
        "metadata": r.metadata,
        "created_at": _timestamp(r.created_at),
    }


def _authorization_data(result: services.AuthorizationResult) -> Any:
    return authorization_payload(result)


# --- Metering -------------------------------------------------------------------------


class AuthorizationCreateApi(APIView):
    required_scope = ApiToken.Scope.METERING

    @extend_schema_serializer(component_name="AuthorizationCreateInput")
    class InputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="AuthorizationMessage")
        class MessageSerializer(serializers.Serializer):
            role = serializers.CharField(max_length=64)
            content = serializers.JSONField(
                help_text="Text, or a list of parts with a text field (OpenAI format)."
            )

        model = serializers.CharField(max_length=100)
        messages = serializers.ListField(
            child=MessageSerializer(), required=False, max_length=100_000
        )
        prompt = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
        input_tokens = serializers.IntegerField(
            min_value=0,
            max_value=_MAX_TOKENS,
            required=False,
            help_text="Known input token count; without it the input is estimated from "
            "messages or prompt at four characters per token.",
        )
        max_tokens = serializers.IntegerField(
            min_value=1,
            max_value=_MAX_TOKENS,
            required=False,
            help_text="Most output tokens the request may produce (capped by the model).",
        )
        task_units = serializers.DecimalField(
            max_digits=18,
            decimal_places=6,
            min_value=Decimal(0),
            max_value=Decimal(_MAX_TOKENS),
            default=Decimal(0),
        )
        request_id = serializers.CharField(
            max_length=150,
            required=False,
            help_text="Your id for the request; retrying with it returns the same "
            "authorization. Defaults to the Idempotency-Key header, else a new id.",
        )
        endpoint = serializers.CharField(max_length=100, allow_blank=True, default="")
        ttl_seconds = serializers.IntegerField(
            min_value=services.MIN_TTL_SECONDS,
            max_value=services.MAX_TTL_SECONDS,
            required=False,
            help_text="How long the hold lives before it expires (default 900).",
        )

    @extend_schema(
        operation_id="authorizations_create",
        summary="Authorize a request: check every cap and hold its estimated cost",
        tags=["metering"],
        parameters=[_IDEMPOTENCY_HEADER],
        request=InputSerializer,
        examples=[_AUTHORIZE_EXAMPLE],
        responses={
            201: AuthorizationOutputSerializer,
            200: OpenApiResponse(AuthorizationOutputSerializer, description="A replay."),
            **error_responses(400, 401, 402, 403, 409, 429),
        },
    )
    def post(self, request: Request) -> Response:
        token = request_token_required(request)
        data = validated(self.InputSerializer, request.data)
        result = services.authorization_create(
            token=token,
            model=data["model"],
            messages=[dict(m) for m in data["messages"]] if "messages" in data else None,
            prompt=data.get("prompt"),
            input_tokens=data.get("input_tokens"),
            max_tokens=data.get("max_tokens"),
            task_units=data["task_units"],
            request_id=data.get("request_id") or request.headers.get("Idempotency-Key"),
            endpoint=data["endpoint"],
            client_ip=client_ip(request),
            ttl_seconds=data.get("ttl_seconds"),
        )
        return _replayable(
            _authorization_data(result),
            replayed=result.replayed,
            created_status=status.HTTP_201_CREATED,
            available_after=result.available_after,
        )


class AuthorizationDetailApi(APIView):
    required_scope = ApiToken.Scope.METERING

    @extend_schema(
        operation_id="authorizations_retrieve",
        summary="An authorization made with this token",
        tags=["metering"],
        responses={200: AuthorizationOutputSerializer, **error_responses(401, 403, 404)},
    )
    def get(self, request: Request, authorization_id: int) -> Response:
        token = request_token_required(request)
        authorization = selectors.authorization_get_for_token(
            token=token, authorization_id=authorization_id
        )
        result = services.AuthorizationResult(
            authorization, services.authorization_status(authorization=authorization)
        )
        return Response(_authorization_data(result))


class AuthorizationCaptureApi(APIView):
    required_scope = ApiToken.Scope.METERING

    @extend_schema(
        operation_id="authorizations_capture",
        summary="Capture: price the actual usage, charge it and record it (exactly once)",
        tags=["metering"],
        request=UsageInputSerializer,
        examples=[_CAPTURE_EXAMPLE],
        responses={
            200: UsageRecordOutputSerializer,
            **error_responses(400, 401, 403, 404, 409, 429),
        },
    )
    def post(self, request: Request, authorization_id: int) -> Response:
        token = request_token_required(request)
        authorization = selectors.authorization_get_for_token(
            token=token, authorization_id=authorization_id
        )
        data = validated(UsageInputSerializer, request.data)
        result = services.authorization_capture(
            authorization=authorization,
            report=usage_report(data),
            content=content_log(data.get("content")),
        )
        return _replayable(
            usage_record_payload(result.record),
            replayed=result.replayed,
            created_status=status.HTTP_200_OK,
            available_after=result.available_after,
        )


class AuthorizationReleaseApi(APIView):
    required_scope = ApiToken.Scope.METERING

    @extend_schema(
        operation_id="authorizations_release",
        summary="Release: the request failed before using anything; give the hold back",
        tags=["metering"],
        request=None,
        responses={
            200: AuthorizationOutputSerializer,
            **error_responses(401, 403, 404, 409, 429),
        },
    )
    def post(self, request: Request, authorization_id: int) -> Response:
        token = request_token_required(request)
        authorization = selectors.authorization_get_for_token(
            token=token, authorization_id=authorization_id
        )
        return Response(
            _authorization_data(services.authorization_release(authorization=authorization))
        )


# --- Usage records --------------------------------------------------------------------


@extend_schema_serializer(component_name="UsageFilter")
class UsageFilterSerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="Created at or after.")
    until = serializers.DateTimeField(required=False, help_text="Created before.")
    model = serializers.CharField(max_length=100, required=False)
    token = serializers.IntegerField(min_value=1, required=False, help_text="API token id.")
    status = serializers.ChoiceField(choices=UsageRecord.Status.choices, required=False)
    endpoint = serializers.CharField(max_length=100, required=False)

    def filters(self) -> selectors.UsageFilters:
        data = self.validated_data
        return selectors.UsageFilters(
            since=data.get("since"),
            until=data.get("until"),
            model=data.get("model"),
            token_id=data.get("token"),
            status=data.get("status"),
            endpoint=data.get("endpoint"),
        )


def _usage_records(request: Request) -> QuerySet[UsageRecord]:
    serializer = UsageFilterSerializer(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return selectors.usage_record_list(
        user=request.user, wallet_id=request_wallet_id(request), filters=serializer.filters()
    )


class UsageCollectionApi(APIView):
    """GET lists the caller's usage records; POST records and charges one request."""

    required_scopes = {
        "GET": ApiToken.Scope.READ,
        "HEAD": ApiToken.Scope.READ,
        "OPTIONS": ApiToken.Scope.READ,
        "POST": ApiToken.Scope.METERING,
    }

    @extend_schema_serializer(component_name="UsageCreateInput")
    class InputSerializer(UsageInputSerializer):
        model = serializers.CharField(max_length=100)
        endpoint = serializers.CharField(max_length=100, allow_blank=True, default="")

    @extend_schema(
        operation_id="usage_list",
        summary="Your usage records in this wallet, newest first",
        tags=["usage"],
        parameters=[UsageFilterSerializer, *_PAGE_PARAMETERS],
        responses={
            200: page_of(UsageRecordOutputSerializer, "UsageRecordPage"),
            **error_responses(400, 401, 403, 404, 429),
        },
    )
    def get(self, request: Request) -> Response:
        paginator = NewestFirst()
        records = _usage_records(request).select_related("token_group")
        page = paginator.paginate_queryset(records, request, view=self)
        return paginator.get_paginated_response([usage_record_payload(r) for r in page or []])

    @extend_schema(
        operation_id="usage_create",
        summary="Record and charge a finished request in one step",
        description="Checks the same caps as an authorization against the actual cost, in "
        "the same transaction as the charge. Requires an Idempotency-Key header.",
        tags=["metering"],
        parameters=[_IDEMPOTENCY_HEADER_REQUIRED],
        request=InputSerializer,
        examples=[_ONE_SHOT_EXAMPLE],
        responses={
            201: UsageRecordOutputSerializer,
            200: OpenApiResponse(UsageRecordOutputSerializer, description="A replay."),
            **error_responses(400, 401, 402, 403, 409, 429),
        },
    )
    def post(self, request: Request) -> Response:
        token = request_token_required(request)
        data = validated(self.InputSerializer, request.data)
        result = services.usage_record_create_oneshot(
            token=token,
            model=data["model"],
            endpoint=data["endpoint"],
            report=usage_report(data),
            request_id=request.headers.get("Idempotency-Key", ""),
            client_ip=client_ip(request),
            content=content_log(data.get("content")),
        )
        return _replayable(
            usage_record_payload(result.record),
            replayed=result.replayed,
            created_status=status.HTTP_201_CREATED,
            available_after=result.available_after,
        )


@extend_schema_serializer(component_name="UsageBreakdownLine")
class _BreakdownLineSerializer(serializers.Serializer):
    label = serializers.CharField()  # type: ignore[assignment]
    quantity = serializers.DecimalField(max_digits=24, decimal_places=6)
    usd_per_unit = serializers.CharField(help_text="Per token (per-million price / 10^6).")
    usd = serializers.CharField()


@extend_schema_serializer(component_name="UsageBreakdown")
class BreakdownSerializer(serializers.Serializer):
    price_id = serializers.IntegerField(help_text="The catalog version used.")
    model = serializers.CharField()
    usage = _UsageCountsSerializer()
    lines = _BreakdownLineSerializer(many=True)
    usd_cost = serializers.CharField(help_text="Exact, in USD: the sum of the lines.")
    markup = serializers.CharField()
    credits_per_usd = serializers.CharField()
    tier_rate = serializers.CharField()
    exact_micro = serializers.CharField(
        help_text="usd_cost x markup x credits_per_usd x tier_rate x 10^6, before rounding."
    )
    rounding = serializers.CharField()
    cost_micro = serializers.IntegerField()
    cost = CreditsField()
    charged = CreditsField()
    shortfall = CreditsField()
    formula = serializers.CharField(help_text="The charge with every number filled in.")


@extend_schema_serializer(component_name="UsageContent")
class ContentOutputSerializer(serializers.Serializer):
    system = serializers.CharField()
    messages = serializers.CharField(help_text="JSON text (cut to CONTENT_LOG_MAX_CHARS).")
    tools = serializers.CharField()
    tool_calls = serializers.CharField()
    response = serializers.CharField()
    context_bytes = serializers.IntegerField()
    truncated = serializers.BooleanField()
    logged_at = serializers.DateTimeField()


def breakdown_payload(record: UsageRecord) -> dict[str, Any]:
    """Every factor of a record's charge, from the record itself (not today's prices)."""
    b = pricing.breakdown_from_record(record)
    exact = b.usd_cost * b.markup * b.credits_per_usd * b.tier_rate * money.MICRO_PER_CREDIT
    return {
        "price_id": b.price_id,
        "model": b.model,
        "usage": usage_record_payload(record)["usage"],
        "lines": [
            {
                "label": line.label,
                "quantity": _plain(line.quantity),
                "usd_per_unit": _plain(line.unit_usd),
                "usd": _plain(line.usd),
            }
            for line in b.lines
        ],
        "usd_cost": _plain(b.usd_cost),
        "markup": _plain(b.markup),
        "credits_per_usd": _plain(b.credits_per_usd),
        "tier_rate": _plain(b.tier_rate),
        "exact_micro": _plain(exact),
        "rounding": pricing.ROUNDING,
        "cost_micro": b.credits_micro,
        "cost": _credits(b.credits_micro),
        "charged": _credits(record.charged_micro),
        "shortfall": _credits(record.shortfall_micro),
        "formula": pricing.breakdown_formula(b),
    }


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def _content_data(content: UsageContent) -> dict[str, Any]:
    return {
        "system": content.system,
        "messages": content.messages,
        "tools": content.tools,
        "tool_calls": content.tool_calls,
        "response": content.response,
        "context_bytes": content.context_bytes,
        "truncated": content.truncated,
        "logged_at": _timestamp(content.created_at),
    }


def content_payload(record: UsageRecord) -> dict[str, Any] | None:
    content = selectors.usage_content_get(record=record)
    return None if content is None else _content_data(content)


def usage_export_line(record: UsageRecord) -> dict[str, Any]:
    """One JSON Lines row: the record, and its content when it has some (loaded with it)."""
    line = usage_record_payload(record)
    content = getattr(record, "content", None)  # absent: the relation raises AttributeError
    if content is not None:
        line["content"] = _content_data(content)
    return line


class UsageDetailApi(APIView):
    required_scope = ApiToken.Scope.READ

    @extend_schema_serializer(component_name="UsageRecordDetail")
    class OutputSerializer(UsageRecordOutputSerializer):
        breakdown = BreakdownSerializer()
        content = ContentOutputSerializer(
            allow_null=True, help_text="Only when content logging was on for this request."
        )

    @extend_schema(
        operation_id="usage_retrieve",
        summary="One of your usage records, with the breakdown of its charge",
        description="Every factor of the charge (price version, token counts by kind, "
        "rates, markup, tier rate, credits per USD, rounding) and the formula with the "
        "numbers filled in, which recomputes to the charged cost exactly. Only your own "
        "records in this wallet; any other id is a 404.",
        tags=["usage"],
        responses={200: OutputSerializer, **error_responses(401, 403, 404, 429)},
    )
    def get(self, request: Request, record_id: int) -> Response:
        record = selectors.usage_record_get(
            user=request.user, wallet_id=request_wallet_id(request), record_id=record_id
        )
        return Response(
            {
                **usage_record_payload(record),
                "breakdown": breakdown_payload(record),
                "content": content_payload(record),
            }
        )


class CsvRenderer(BaseRenderer):
    """Lets clients ask for ``Accept: text/csv``; the export streams its own bytes, and an
    error is rendered as its JSON envelope."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None
    ) -> bytes:
        return JSONRenderer().render(data)


class JsonLinesRenderer(CsvRenderer):
    """``Accept: application/x-ndjson`` or ``?format=jsonl``: the export as JSON Lines."""

    media_type = "application/x-ndjson"
    format = "jsonl"


class UsageExportApi(APIView):
    required_scope = ApiToken.Scope.READ
    renderer_classes = [JSONRenderer, CsvRenderer, JsonLinesRenderer]

    @extend_schema(
        operation_id="usage_export",
        summary="Your usage records as CSV or JSON Lines, oldest first, streamed",
        description="The same filters as the list (date range, model, token, status, "
        "endpoint). CSV unless ?format=jsonl (or Accept: application/x-ndjson). Content "
        "columns (content_*) appear only when a record in the export had content logged. "
        "Streamed in constant memory, so any number of rows can be exported in one response.",
        tags=["usage"],
        parameters=[
            UsageFilterSerializer,
            OpenApiParameter("format", OpenApiTypes.STR, enum=["csv", "jsonl"]),
        ],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV"),
            (200, "application/x-ndjson"): OpenApiResponse(
                OpenApiTypes.STR, description="JSON Lines: one usage record per line"
            ),
            **error_responses(400, 401, 403, 404, 429),
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        records = _usage_records(request)
        export: UsageExport
        if getattr(request.accepted_renderer, "format", "") == "jsonl":
            export = UsageJsonLinesExport(records, render=usage_export_line)
            content_type, extension = "application/x-ndjson; charset=utf-8", "jsonl"
        else:
            export = UsageExport(records)
            content_type, extension = "text/csv; charset=utf-8", "csv"
        # Under ASGI a sync iterator would be read whole before sending: stream async.
        stream = export.achunks() if isinstance(request._request, ASGIRequest) else export.chunks()
        response = StreamingHttpResponse(stream, content_type=content_type)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        response["Content-Disposition"] = f'attachment; filename="usage-{stamp}.{extension}"'
        response["Cache-Control"] = "no-store"
        return response


# --- Wallet and ledger ----------------------------------------------------------------


@extend_schema_serializer(component_name="TokenBudget")
class TokenBudgetSerializer(serializers.Serializer):
    period = serializers.ChoiceField(choices=["daily", "weekly", "monthly"])
    limit = CreditsField()
    used = CreditsField(help_text="Charged in this period.")
    in_flight = CreditsField(help_text="Held by this token's requests still running.")
    available = CreditsField()
    period_start = serializers.DateField()
    resets_at = serializers.DateTimeField(help_text="When the next period starts (UTC).")


def token_budget_payload(token: ApiToken) -> dict[str, Any] | None:
    """The token's budget for display (used / limit / resets at), or None."""
    budget = selectors.token_budget_status(token=token)
    if budget is None:
        return None
    return {
        "period": budget.period,
        "limit": _credits(budget.limit_micro),
        "used": _credits(budget.used_micro),
        "in_flight": _credits(budget.in_flight_micro),
        "available": _credits(budget.available_micro),
        "period_start": budget.period_start.isoformat(),
        "resets_at": _timestamp(budget.resets_at),
    }


@extend_schema_serializer(component_name="WalletLot")
class _LotSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    remaining = CreditsField()
    expires_at = serializers.DateTimeField(allow_null=True)


class WalletApi(APIView):
    required_scope = ApiToken.Scope.READ

    @extend_schema_serializer(component_name="Wallet")
    class OutputSerializer(serializers.Serializer):
        @extend_schema_serializer(component_name="WalletCategory")
        class CategorySerializer(serializers.Serializer):
            category = serializers.CharField()
            remaining = CreditsField()
            lots = serializers.IntegerField()
            next_expiry = serializers.DateTimeField(allow_null=True)
            expiring_lots = _LotSerializer(many=True, help_text="Soonest expiry first.")

        @extend_schema_serializer(component_name="WalletConsumption")
        class ConsumptionSerializer(serializers.Serializer):
            requests = serializers.IntegerField()
            charged = CreditsField(source="charged_micro")
            shortfall = CreditsField(source="shortfall_micro")

        @extend_schema_serializer(component_name="WalletToken")
        class TokenSerializer(serializers.Serializer):
            id = serializers.IntegerField()
            name = serializers.CharField()
            prefix = serializers.CharField(source="display_prefix")
            scopes = serializers.ListField(child=serializers.CharField())
            group = serializers.CharField(source="group.name")
            tier_rate = serializers.DecimalField(
                source="group.tier.rate", max_digits=8, decimal_places=4
            )
            quota = serializers.SerializerMethodField()
            used = CreditsField(source="used_micro")
            expires_at = serializers.DateTimeField(allow_null=True)
            budget = serializers.SerializerMethodField(
                help_text="The periodic budget: used / limit / resets_at; null if none."
            )
            rate_limits = serializers.SerializerMethodField()
            log_content = serializers.BooleanField(
                help_text="This token's own flag (its organization's may also be on)."
            )

            def get_quota(self, token: ApiToken) -> str | None:
                if token.quota_micro is None:
                    return None
                return f"{money.micro_to_credits(token.quota_micro):.6f}"

            @extend_schema_field(TokenBudgetSerializer(allow_null=True))
            def get_budget(self, token: ApiToken) -> dict[str, Any] | None:
                return token_budget_payload(token)

            @extend_schema_field(
                inline_serializer(
                    "TokenRateLimits",
                    {
                        "requests_per_minute": serializers.IntegerField(allow_null=True),
                        "tokens_per_minute": serializers.IntegerField(allow_null=True),
                    },
                )
            )
            def get_rate_limits(self, token: ApiToken) -> dict[str, int | None]:
                return {
                    "requests_per_minute": token.rate_limit_rpm,
                    "tokens_per_minute": token.rate_limit_tpm,
                }

        wallet_id = serializers.IntegerField()
        owner = serializers.DictField(child=serializers.CharField())
        balance = CreditsField()
        held = CreditsField(help_text="Reserved by requests in flight.")
        available = CreditsField(help_text="balance - held - credits past their expiry.")
        consumption = ConsumptionSerializer(help_text="Your requests from this wallet.")
        categories = CategorySerializer(many=True)
        token = TokenSerializer(allow_null=True)

    @extend_schema(
        operation_id="wallet_retrieve",
        summary="Balance, held and available credits, consumption, lots by category",
        tags=["wallet"],
        responses={200: OutputSerializer, **error_responses(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        wallet = wallet_selectors.wallet_get(wallet_id=request_wallet_id(request))
        summary = wallet_selectors.wallet_summary(wallet=wallet)
        expiring: dict[str, list[Any]] = defaultdict(list)
        for lot in wallet_selectors.lot_list(wallet=wallet).filter(expires_at__isnull=False)[:200]:
            expiring[lot.category].append(lot)
        data = {
            "wallet_id": wallet.pk,
            "owner": (
                {"type": "organization", "name": wallet.owner_label}
                if wallet.organization_id
                else {"type": "user", "name": wallet.owner_label}
            ),
            "balance": summary.balance,
            "held": summary.held,
            "available": summary.available,
            "consumption": selectors.usage_consumption(wallet_id=wallet.pk, user=request.user),
            "categories": [
                {
                    "category": c.category,
                    "remaining": c.remaining,
                    "lots": c.lots,
                    "next_expiry": c.next_expiry,
                    "expiring_lots": expiring.get(c.category, []),
                }
                for c in summary.categories
            ],
            "token": request_token(request),
        }
        return Response(self.OutputSerializer(data).data)


class LedgerApi(APIView):
    required_scope = ApiToken.Scope.READ

    @extend_schema_serializer(component_name="LedgerFilter")
    class FilterSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=LedgerEntry.Kind.choices, required=False)
        since = serializers.DateTimeField(required=False)
        until = serializers.DateTimeField(required=False)

    @extend_schema_serializer(component_name="LedgerEntry")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        kind = serializers.CharField()
        amount = serializers.SerializerMethodField(help_text="Signed credits.")
        balance_after = CreditsField()
        reference_type = serializers.CharField()
        reference_id = serializers.CharField()
        reason = serializers.CharField()
        created_at = serializers.DateTimeField()

        def get_amount(self, entry: LedgerEntry) -> str:
            return f"{money.micro_to_credits(entry.amount):.6f}"

    @extend_schema(
        operation_id="ledger_list",
        summary="The wallet's ledger, newest first",
        description="On an organization's pool only owners and admins may read the ledger.",
        tags=["wallet"],
        parameters=[FilterSerializer, *_PAGE_PARAMETERS],
        responses={
            200: page_of(OutputSerializer, "LedgerEntryPage"),
            **error_responses(400, 401, 403, 404, 429),
        },
    )
    def get(self, request: Request) -> Response:
        token = request_token(request)
        if (
            token is not None
            and token.membership_id is not None
            and (token.membership is None or not token.membership.can_manage)
        ):
            raise NotAllowed("Only owners and admins can read the organization's ledger.")
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        wallet = wallet_selectors.wallet_get(wallet_id=request_wallet_id(request))
        kind = filters.validated_data.get("kind")
        entries = wallet_selectors.ledger_entry_list(
            wallet=wallet,
            kinds=[kind] if kind else None,
            since=filters.validated_data.get("since"),
            until=filters.validated_data.get("until"),
        )
        paginator = NewestFirst()
        page = paginator.paginate_queryset(entries, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)
