"""Reads of the price catalog, authorizations and usage records.

Usage records are read by their owner only: every list and lookup is scoped to one
(user, wallet) pair, so a token never sees another user's records, even on a shared pool.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from usage.errors import AuthorizationNotFound, UnknownModel, UsageRecordNotFound
from usage.models import Authorization, ModelPrice, UsageRecord


def model_price_current(*, model: str, now: dt.datetime | None = None) -> ModelPrice:
    """The catalog version of ``model`` in effect at ``now``; ``UnknownModel`` if there is
    none or the model is no longer offered (its current version is inactive)."""
    now = now or timezone.now()
    price = (
        ModelPrice.objects.filter(model=model, effective_from__lte=now)
        .order_by("-effective_from")
        .first()
    )
    if price is None or not price.active:
        raise UnknownModel(model=model[:100])
    return price


def model_price_list(*, now: dt.datetime | None = None) -> list[ModelPrice]:
    """The catalog as it stands at ``now``: the current version of every offered model."""
    now = now or timezone.now()
    current = (
        ModelPrice.objects.filter(effective_from__lte=now)
        .order_by("model", "-effective_from")
        .distinct("model")
    )
    return sorted((p for p in current if p.active), key=lambda p: (p.provider, p.model))


def authorization_get_for_token(*, token: Any, authorization_id: int) -> Authorization:
    """An authorization made with ``token``; anyone else's is ``AuthorizationNotFound``."""
    authorization = (
        Authorization.objects.select_related("hold", "price")
        .filter(pk=authorization_id, token_id=token.pk)
        .first()
    )
    if authorization is None:
        raise AuthorizationNotFound(authorization_id=authorization_id)
    return authorization


@dataclass(frozen=True)
class UsageFilters:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    model: str | None = None
    token_id: int | None = None
    status: str | None = None
    endpoint: str | None = None


def usage_record_list(
    *, user: Any, wallet_id: int, filters: UsageFilters | None = None
) -> QuerySet[UsageRecord]:
    """``user``'s records in one wallet, newest first, narrowed by ``filters``
    (``since`` inclusive, ``until`` exclusive, on ``created_at``)."""
    records = UsageRecord.objects.filter(user=user, wallet_id=wallet_id)
    f = filters or UsageFilters()
    if f.since is not None:
        records = records.filter(created_at__gte=f.since)
    if f.until is not None:
        records = records.filter(created_at__lt=f.until)
    if f.model:
        records = records.filter(model=f.model)
    if f.token_id is not None:
        records = records.filter(token_id=f.token_id)
    if f.status:
        records = records.filter(status=f.status)
    if f.endpoint:
        records = records.filter(endpoint=f.endpoint)
    return records.order_by("-id")


def usage_record_get(*, user: Any, wallet_id: int, record_id: int) -> UsageRecord:
    record = (
        UsageRecord.objects.select_related("token_group")
        .filter(pk=record_id, user=user, wallet_id=wallet_id)
        .first()
    )
    if record is None:
        raise UsageRecordNotFound(usage_record_id=record_id)
    return record


@dataclass(frozen=True)
class Consumption:
    requests: int
    charged_micro: int
    shortfall_micro: int


def usage_consumption(*, wallet_id: int, user: Any = None) -> Consumption:
    """Requests and credits charged in a wallet (by one user when given)."""
    records = UsageRecord.objects.filter(wallet_id=wallet_id)
    if user is not None:
        records = records.filter(user=user)
    totals = records.aggregate(
        requests=Count("id"), charged=Sum("charged_micro"), shortfall=Sum("shortfall_micro")
    )
    return Consumption(
        requests=totals["requests"] or 0,
        charged_micro=int(totals["charged"] or 0),
        shortfall_micro=int(totals["shortfall"] or 0),
    )
