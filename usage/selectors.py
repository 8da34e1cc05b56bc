"""Reads of the price catalog, authorizations and usage records.

Usage records are read by their owner only: every list and lookup is scoped to one
(user, wallet) pair, so a token never sees another user's records, even on a shared pool.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from config import cached_reads, sql
from usage.errors import AuthorizationNotFound, UnknownModel, UsageRecordNotFound
from usage.models import Authorization, ModelPrice, UsageContent, UsageRecord
from wallet.models import Hold

# The hot-path reads are plain SQL (see config/sql.py); the index
# model_price_lookup_idx (model, effective_from DESC) answers the first with one probe.
# Column lists come from the models' metadata, never from input.
_CURRENT_PRICE = (
    f'SELECT {sql.columns(ModelPrice, "p")} FROM "usage_modelprice" p '  # noqa: S608
    'WHERE p."model" = %s AND p."effective_from" <= %s ORDER BY p."effective_from" DESC LIMIT 1'
)
_AUTHORIZATION_FOR_TOKEN = (
    f"SELECT {sql.columns(Authorization, 'a')}, {sql.columns(Hold, 'h')}, "  # noqa: S608
    f"{sql.columns(ModelPrice, 'p')} "
    'FROM "usage_authorization" a '
    'JOIN "wallet_hold" h ON h."id" = a."hold_id" '
    'JOIN "usage_modelprice" p ON p."id" = a."price_id" '
    'WHERE a."id" = %s AND a."token_id" = %s'
)


def model_price_current(
    *, model: str, now: dt.datetime | None = None, checked: bool = False
) -> ModelPrice:
    """The catalog version of ``model`` in effect at ``now``; ``UnknownModel`` if there is
    none or the model is no longer offered (its current version is inactive).

    ``checked``: the caller has the authorization function check the version (the
    one-call path), so in an attempt that may read kept copies, the version this process
    last read is used (``from_memory``)."""
    now = now or timezone.now()
    kept = cached_reads.memo("prices") if cached_reads.keeping() else None
    row = None
    if kept is not None and checked and cached_reads.reading_cached():
        row = kept.get(model)
    if row is not None:
        cached_reads.used()
        price = sql.from_row(ModelPrice, row)
        price.from_memory = True  # checked by ``usage_authorization_open``
        return price
    row = sql.fetch_one(_CURRENT_PRICE, [model, now])
    current = sql.from_row(ModelPrice, row) if row is not None else None
    if current is None or not current.active:
        raise UnknownModel(model=model[:100])
    if kept is not None:
        kept.put(model, row)
    return current


def model_price_list(*, now: dt.datetime | None = None) -> list[ModelPrice]:
    """The catalog as it stands at ``now``: the current version of every offered model."""
    now = now or timezone.now()
    versions = ModelPrice.objects.filter(effective_from__lte=now).order_by(
        "model", "-effective_from"
    )
    if connection.vendor == "postgresql":
        versions = versions.distinct("model")  # DISTINCT ON: PostgreSQL only
    current: dict[str, ModelPrice] = {}
    for price in versions:
        current.setdefault(price.model, price)  # the newest version of each model
    return sorted((p for p in current.values() if p.active), key=lambda p: (p.provider, p.model))


def authorization_get_for_token(*, token: Any, authorization_id: int) -> Authorization:
    """An authorization made with ``token``; anyone else's is ``AuthorizationNotFound``.

    In an attempt that may read kept copies, one this process opened and kept
    (``authorization_keep``) is taken from memory instead, once: its columns do not change
    but for its settlement, which the capture function checks."""
    if cached_reads.reading_cached():
        kept = cached_reads.memo("authorizations")
        build = kept.pop((authorization_id, token.pk)) if kept is not None else None
        if build is not None:
            cached_reads.used()
            authorization = build()
            authorization._state.fields_cache["token"] = token
            return authorization
    row = sql.fetch_one(_AUTHORIZATION_FOR_TOKEN, [authorization_id, token.pk])
    if row is None:
        raise AuthorizationNotFound(authorization_id=authorization_id)
    authorization = sql.from_row(Authorization, row)
    hold = sql.from_row(Hold, row, sql.width(Authorization))
    price = sql.from_row(ModelPrice, row, sql.width(Authorization) + sql.width(Hold))
    authorization._state.fields_cache.update(hold=hold, price=price, token=token)
    return authorization


def authorization_keep(
    *, authorization_id: int, token_id: int, build: Callable[[], Authorization]
) -> None:
    """Keep an authorization this process just opened for its capture (inside an attempt
    only): ``build`` makes a fresh instance of it (with its hold and price)."""
    if cached_reads.keeping():
        kept = cached_reads.memo("authorizations")
        if kept is not None:
            kept.put((authorization_id, token_id), build)


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


# --- Margin report (Finance) ------------------------------------------------------------------


@dataclass(frozen=True)
class MarginRow:
    day: dt.date
    model: str
    requests: int
    charged_micro: int
    charged_usd: Any  # Decimal: credits charged, in USD at CREDITS_PER_USD
    vendor_usd: Any  # Decimal: the providers' cost recorded on the records
    margin_usd: Any
    margin_percent: Any  # Decimal or None when nothing was charged


def usage_margin_report(*, since: dt.date, until: dt.date) -> list[MarginRow]:
    """Per UTC day and model, for records created in [since, until]: credits charged net of
    staff corrections (reversals and re-charges pointing at the records), in USD at the
    credit rate, against the vendor cost on the records, and the margin."""
    from decimal import Decimal

    from django.db.models.functions import TruncDate

    from wallet import money
    from wallet.models import LedgerEntry

    start = dt.datetime.combine(since, dt.time.min, tzinfo=dt.UTC)
    end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    records = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
    rows = (
        records.annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
        .values("day", "model")
        .annotate(requests=Count("id"), charged=Sum("charged_micro"), vendor=Sum("usd_cost"))
        .order_by("day", "model")
    )
    corrections: dict[tuple[dt.date, str], int] = {}
    corrected = LedgerEntry.objects.filter(
        reference_type="usage.usagerecord", actor__isnull=False
    ).values_list("reference_id", "amount")
    by_record: dict[int, int] = {}
    for reference_id, amount in corrected:
        by_record[int(reference_id)] = by_record.get(int(reference_id), 0) + amount
    if by_record:
        for record_id, created_at, model in records.filter(pk__in=list(by_record)).values_list(
            "id", "created_at", "model"
        ):
            bucket = (created_at.astimezone(dt.UTC).date(), model)
            # Ledger amounts are signed (a reversal is positive): charged = -sum(amounts).
            corrections[bucket] = corrections.get(bucket, 0) - by_record[record_id]
    result = []
    for row in rows:
        charged = int(row["charged"] or 0) + corrections.get((row["day"], row["model"]), 0)
        charged_usd = money.micro_to_usd(charged)
        vendor = Decimal(row["vendor"] or 0)
        margin = charged_usd - vendor
        percent = (margin * 100 / charged_usd).quantize(Decimal("0.01")) if charged_usd else None
        result.append(
            MarginRow(
                day=row["day"],
                model=row["model"],
                requests=row["requests"],
                charged_micro=charged,
                charged_usd=charged_usd.quantize(Decimal("0.000001")),
                vendor_usd=vendor.quantize(Decimal("0.000001")),
                margin_usd=margin.quantize(Decimal("0.000001")),
                margin_percent=percent,
            )
        )
    return result


def usage_content_get(*, record: UsageRecord) -> UsageContent | None:
    """The content logged with ``record`` (None when logging was off, or it was purged)."""
    return UsageContent.objects.filter(record=record).first()


@dataclass(frozen=True)
class BudgetStatus:
    """A token's periodic budget, as shown on the token: used / limit / resets at."""

    period: str
    limit_micro: int
    used_micro: int  # charged in this period
    in_flight_micro: int  # held by requests still running
    available_micro: int
    period_start: dt.date
    resets_at: dt.datetime


def tokens_in_flight(*, token_ids: Sequence[int]) -> dict[int, int]:
    """µcr reserved by each token's authorizations still in flight (active holds), for many
    tokens in one query; tokens with nothing in flight are absent."""
    rows = (
        Authorization.objects.filter(
            token_id__in=token_ids, settled_at__isnull=True, hold__status=Hold.Status.ACTIVE
        )
        .values("token_id")
        .annotate(total=Sum("hold__amount"))
    )
    return {row["token_id"]: int(row["total"]) for row in rows}


def token_budget_status(
    *, token: Any, now: dt.datetime | None = None, in_flight: int | None = None
) -> BudgetStatus | None:
    """The budget of ``token`` for the current UTC period, or None if it has none.
    ``in_flight`` is the token's entry of ``tokens_in_flight`` when the caller read it for
    many tokens at once; otherwise it is read here."""
    from accounts import services as account_services  # the budget's calendar lives there

    if token.budget_micro is None or not token.budget_period:
        return None
    now = now or timezone.now()
    start, resets_at = account_services.budget_period_bounds(token.budget_period, now)
    used = account_services.api_token_budget_spent(token=token, now=now)
    if in_flight is None:
        in_flight = tokens_in_flight(token_ids=[token.pk]).get(token.pk, 0)
    return BudgetStatus(
        period=token.budget_period,
        limit_micro=token.budget_micro,
        used_micro=used,
        in_flight_micro=in_flight,
        available_micro=max(token.budget_micro - used - in_flight, 0),
        period_start=start,
        resets_at=resets_at,
    )
