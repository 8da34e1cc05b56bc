"""``/api/v1/redemptions``: redeem a code, list your redemptions. Thin: parse, call the
service or selector, render."""

from __future__ import annotations

from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.views import client_ip
from billing.apis import CreditsField
from redemption import selectors, services


class RedemptionOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    code = serializers.CharField(source="code.display", help_text="Only the last characters.")
    offer = serializers.CharField(source="batch.name")
    credits_micro = serializers.IntegerField()
    credits = CreditsField(source="credits_micro")
    expires_at = serializers.DateTimeField(
        allow_null=True, help_text="When the credits expire (null: never)."
    )
    balance_after_micro = serializers.IntegerField(source="ledger_entry.balance_after")
    created_at = serializers.DateTimeField()


class _Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 200


class RedemptionsApi(APIView):
    """``POST /api/v1/redemptions`` redeems a code for the caller; ``GET`` lists the caller's
    redemptions, newest first."""

    @extend_schema_serializer(component_name="RedeemInput")
    class InputSerializer(serializers.Serializer):
        code = serializers.CharField(max_length=100)

    @extend_schema(
        operation_id="redemptions_list",
        parameters=[OpenApiParameter("limit", int), OpenApiParameter("offset", int)],
        responses=inline_serializer(
            "RedemptionPage",
            {
                "count": serializers.IntegerField(),
                "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True),
                "results": RedemptionOutputSerializer(many=True),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        paginator = _Pagination()
        page = paginator.paginate_queryset(
            selectors.redemption_list_for_user(user=request.user), request, view=self
        )
        return paginator.get_paginated_response(RedemptionOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="redemptions_create",
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="Optional: a retry with the same key returns the first redemption.",
            )
        ],
        request=InputSerializer,
        responses={201: RedemptionOutputSerializer, 200: RedemptionOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = services.code_redeem(
            user=request.user,
            code=body.validated_data["code"],
            ip_address=client_ip(request),
            client_key=request.headers.get("Idempotency-Key", ""),
        )
        return Response(
            RedemptionOutputSerializer(result.redemption).data,
            status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED,
        )
