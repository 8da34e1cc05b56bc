"""Reads of consumption for the console: totals, daily series per model and per-model
summaries of one owner's usage, from the daily rollups plus a live read of the records of
the days not rolled up yet (today, usually: an indexed range on ``created_at``).

Both sources are keyed by the same filter dimensions (model, token, status), so a filtered
report is exact whichever source a day comes from. Days are UTC.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDate

from usage.models import UsageDaily, UsageRecord, UsageRollupState
from usage.rollups import SUMMED as _SUMMED
from usage.rollups import day_start
from usage.selectors import UsageFilters, usage_record_list


@dataclass(frozen=True)
class ReportFilters:
    date_from: dt.date | None = None  # inclusive
    date_to: dt.date | None = None  # inclusive
    model: str = ""
    token_id: int | None = None
    status: str = ""


@dataclass
class Sums:
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    charged_micro: int = 0
    shortfall_micro: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        self.requests += int(row["requests"] or 0)
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + int(row[name] or 0))

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.reasoning_tokens


@dataclass
class ModelSummary(Sums):
    model: str = ""


@dataclass
class UsageReport:
    """``daily[day][model]`` are the credits charged; ``models`` the per-model sums, most
    credits first; ``total`` everything."""

    daily: dict[dt.date, dict[str, int]] = field(default_factory=dict)
    models: list[ModelSummary] = field(default_factory=list)
    total: Sums = field(default_factory=Sums)


def rollup_complete_through() -> dt.date | None:
    return UsageRollupState.objects.filter(pk=1).values_list("complete_through", flat=True).first()


def _sums() -> dict[str, Any]:
    return {name: Sum(name) for name in _SUMMED}


def _rolled(
    *, wallet_id: int, user: Any, f: ReportFilters, through: dt.date
) -> QuerySet[UsageDaily]:
    rows = UsageDaily.objects.filter(wallet_id=wallet_id, user=user, day__lte=through)
    if f.date_from is not None:
        rows = rows.filter(day__gte=f.date_from)
    if f.date_to is not None:
        rows = rows.filter(day__lte=f.date_to)
    if f.model:
        rows = rows.filter(model=f.model)
    if f.token_id is not None:
        rows = rows.filter(token_id=f.token_id)
    if f.status:
        rows = rows.filter(status=f.status)
    return rows


def _live(
    *, wallet_id: int, user: Any, f: ReportFilters, after: dt.date | None
) -> QuerySet[UsageRecord]:
    starts = [d for d in (f.date_from, after and after + dt.timedelta(days=1)) if d is not None]
    filters = UsageFilters(
        since=day_start(max(starts)) if starts else None,
        until=day_start(f.date_to + dt.timedelta(days=1)) if f.date_to is not None else None,
        model=f.model or None,
        token_id=f.token_id,
        status=f.status or None,
    )
    return usage_record_list(user=user, wallet_id=wallet_id, filters=filters).order_by()


def _sources(*, wallet_id: int, user: Any, f: ReportFilters) -> tuple[Any, Any]:
    """The rollup rows and the live records that together cover the filtered range (either
    may be ``None`` when the range lies wholly on the other side of the boundary)."""
    through = rollup_complete_through()
    rolled = None
    if through is not None and (f.date_from is None or f.date_from <= through):
        rolled = _rolled(wallet_id=wallet_id, user=user, f=f, through=through)
    live = None
    if through is None or f.date_to is None or f.date_to > through:
        live = _live(wallet_id=wallet_id, user=user, f=f, after=through)
    return rolled, live


def usage_totals(*, wallet_id: int, user: Any, filters: ReportFilters | None = None) -> Sums:
    """Requests, tokens and credits of ``user``'s usage in one wallet."""
    rolled, live = _sources(wallet_id=wallet_id, user=user, f=filters or ReportFilters())
    total = Sums()
    if rolled is not None:
        total.add(rolled.aggregate(requests=Sum("requests"), **_sums()))
    if live is not None:
        total.add(live.aggregate(requests=Count("id"), **_sums()))
    return total


def usage_report(*, wallet_id: int, user: Any, filters: ReportFilters) -> UsageReport:
    """Daily credits per model and per-model sums of ``user``'s usage in one wallet."""
    rolled, live = _sources(wallet_id=wallet_id, user=user, f=filters)
    rows: list[dict[str, Any]] = []
    if rolled is not None:
        rows += rolled.values("day", "model").annotate(requests=Sum("requests"), **_sums())
    if live is not None:
        rows += (
            live.annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
            .values("day", "model")
            .annotate(requests=Count("id"), **_sums())
            .order_by()
        )
    report = UsageReport()
    models: dict[str, ModelSummary] = {}
    daily: dict[dt.date, dict[str, int]] = defaultdict(dict)
    for row in rows:
        models.setdefault(row["model"], ModelSummary(model=row["model"])).add(row)
        report.total.add(row)
        day = daily[row["day"]]
        day[row["model"]] = day.get(row["model"], 0) + int(row["charged_micro"] or 0)
    report.daily = dict(sorted(daily.items()))
    report.models = sorted(models.values(), key=lambda m: (-m.charged_micro, m.model))
    return report


def usage_model_names(*, wallet_id: int, user: Any) -> list[str]:
    """Models the user has used in a wallet (for the filter's choices)."""
    names = set(
        UsageDaily.objects.filter(wallet_id=wallet_id, user=user)
        .values_list("model", flat=True)
        .distinct()
    )
    through = rollup_complete_through()
    live = UsageRecord.objects.filter(wallet_id=wallet_id, user=user)
    if through is not None:
        live = live.filter(created_at__gte=day_start(through + dt.timedelta(days=1)))
    names.update(live.values_list("model", flat=True).distinct())
    return sorted(names)


def usage_totals_by_token(*, user: Any, wallet_ids: list[int]) -> dict[int, Sums]:
    """``user``'s requests and credits per API token, over the given wallets (the wallets
    of the user's tokens: the owner index starts with the wallet)."""
    through = rollup_complete_through()
    totals: dict[int, Sums] = defaultdict(Sums)
    if through is not None:
        rolled = (
            UsageDaily.objects.filter(
                wallet_id__in=wallet_ids, user=user, day__lte=through, token__isnull=False
            )
            .values("token_id")
            .annotate(requests=Sum("requests"), **_sums())
            .order_by()
        )
        for row in rolled:
            totals[row["token_id"]].add(row)
    live = UsageRecord.objects.filter(wallet_id__in=wallet_ids, user=user, token__isnull=False)
    if through is not None:
        live = live.filter(created_at__gte=day_start(through + dt.timedelta(days=1)))
    for row in live.values("token_id").annotate(requests=Count("id"), **_sums()).order_by():
        totals[row["token_id"]].add(row)
    return dict(totals)
