"""Reads of the redemption app."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from redemption.models import Redemption, RedemptionBatch, RedemptionCode


def redemption_list_for_user(*, user: Any) -> QuerySet[Redemption]:
    """The user's own redemptions, newest first."""
    return (
        Redemption.objects.filter(user=user)
        .select_related("code", "batch", "ledger_entry")
        .order_by("-created_at", "-id")
    )


def code_list_for_batch(*, batch: RedemptionBatch) -> QuerySet[RedemptionCode]:
    return RedemptionCode.objects.filter(batch=batch).prefetch_related("redemptions__user")
