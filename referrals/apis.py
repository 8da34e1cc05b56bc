"""``/api/v1/referrals``: the caller's invite code and reward figures, and transfers of the
reward balance to the wallet. Only the caller's own account is ever visible."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.apis import CreditsField
from referrals import selectors, services
from referrals.models import ReferralLedgerEntry
from wallet import money


class ReferralEntryOutputSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ReferralLedgerEntry.Kind.choices)
    amount_micro = serializers.IntegerField(source="amount")
    amount = CreditsField()
    balance_after_micro = serializers.IntegerField(source="balance_after")
    debt_after_micro = serializers.IntegerField(source="debt_after")
    invitee = serializers.SerializerMethodField(help_text="Masked email of the invited account.")
    note = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_invitee(self, entry: ReferralLedgerEntry) -> str | None:
        if entry.referral is None:
            return None
        return selectors.masked_email(entry.referral.invitee.email)


class ReferralSummaryOutputSerializer(serializers.Serializer):
    code = serializers.CharField()
    link = serializers.CharField()
    proceeds_micro = serializers.IntegerField(help_text="Reward balance ready to transfer.")
    proceeds = CreditsField(source="proceeds_micro")
    total_revenue_micro = serializers.IntegerField(help_text="Rewards earned, less reversals.")
    total_revenue = CreditsField(source="total_revenue_micro")
    debt_micro = serializers.IntegerField(help_text="Reversed rewards not yet recovered.")
    invited_count = serializers.IntegerField()
    minimum_transfer_micro = serializers.IntegerField()
    recent_rewards = ReferralEntryOutputSerializer(many=True, source="recent")


class ReferralSummaryApi(APIView):
    """``GET /api/v1/referrals``: the caller's invite code and link, proceeds, total revenue,
    number of people invited and the latest reward activity."""

    @extend_schema(operation_id="referrals_retrieve", responses=ReferralSummaryOutputSerializer)
    def get(self, request: Request) -> Response:
        account = services.referral_account_get_or_create(user=request.user)
        summary = selectors.referral_summary(account=account)
        data = {**summary.__dict__, "minimum_transfer_micro": services.minimum_transfer_micro()}
        return Response(ReferralSummaryOutputSerializer(data).data)


class ReferralTransferOutputSerializer(serializers.Serializer):
    transferred_micro = serializers.IntegerField()
    transferred = CreditsField(source="transferred_micro")
    proceeds_after_micro = serializers.IntegerField()
    wallet_entry_id = serializers.IntegerField()
    wallet_balance_after_micro = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class ReferralTransferApi(APIView):
    """``POST /api/v1/referrals/transfer``: move reward balance into the wallet as referral
    credits. Requires an ``Idempotency-Key`` header; a retry with the same key moves
    nothing more and answers 200 with the first transfer."""

    @extend_schema_serializer(component_name="ReferralTransferInput")
    class InputSerializer(serializers.Serializer):
        amount = serializers.CharField(
            required=False, allow_blank=True, max_length=40, help_text="Credits; empty: all."
        )

    @extend_schema(
        operation_id="referrals_transfer",
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description="A retry with the same key returns the first transfer.",
            )
        ],
        request=InputSerializer,
        responses={201: ReferralTransferOutputSerializer, 200: ReferralTransferOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        amount = body.validated_data.get("amount")
        result = services.reward_transfer(
            user=request.user,
            idempotency_key=request.headers.get("Idempotency-Key", ""),
            amount_micro=money.credits_to_micro(amount) if amount else None,
        )
        data = {
            "transferred_micro": result.wallet_entry.amount,
            "proceeds_after_micro": result.entry.balance_after,
            "wallet_entry_id": result.wallet_entry.pk,
            "wallet_balance_after_micro": result.wallet_entry.balance_after,
            "created_at": result.entry.created_at,
        }
        return Response(
            ReferralTransferOutputSerializer(data).data,
            status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED,
        )
