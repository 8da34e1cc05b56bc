"""Daily usage rollups (``UsageDaily``): the sums the console reads instead of scanning
usage records.

* A day is recomputed whole from its records: its rows are deleted and written again in one
  transaction, so running a rollup twice (or concurrently: the state row is locked) gives the
  same rows.
* ``UsageRollupState.complete_through`` is the last UTC day that is over (plus a grace for
  requests still committing at midnight) and rolled up; readers take days up to it from the
  rollups and later ones live from the records (an indexed range on ``created_at``).
* Records are written with ``created_at`` = the moment they are settled, so a finished day
  does not change. Should one ever be corrected, ``manage.py usage_rollup --day D``
  recomputes it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from usage.models import UsageDaily, UsageRecord, UsageRollupState

SUMMED = (
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "charged_micro",
    "shortfall_micro",
)
_KEYS = ("day", "wallet_id", "user_id", "token_id", "model", "status")


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


def last_finished_day(now: dt.datetime | None = None) -> dt.date:
    """The latest UTC day that ended at least ``USAGE_ROLLUP_GRACE_SECONDS`` ago."""
    now = now or timezone.now()
    grace = dt.timedelta(seconds=settings.USAGE_ROLLUP_GRACE_SECONDS)
    return (now - grace).astimezone(dt.UTC).date() - dt.timedelta(days=1)


def _state_locked() -> UsageRollupState:
    UsageRollupState.objects.get_or_create(pk=1)
    return UsageRollupState.objects.select_for_update().get(pk=1)


def _recompute(first: dt.date, last: dt.date, now: dt.datetime) -> int:
    """Replace the rollups of days ``first``..``last`` (inclusive) by sums of the records.
    Must run inside the transaction that holds the state lock."""
    records = (
        UsageRecord.objects.filter(
            created_at__gte=day_start(first), created_at__lt=day_start(last + dt.timedelta(days=1))
        )
        .annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
        .values(*_KEYS)
        .annotate(requests=Count("id"), **{f"sum_{name}": Sum(name) for name in SUMMED})
        .order_by()
    )
    rows = [
        UsageDaily(
            **{key: row[key] for key in _KEYS},
            requests=row["requests"],
            **{name: row[f"sum_{name}"] or 0 for name in SUMMED},
            computed_at=now,
        )
        for row in records.iterator(chunk_size=5000)
    ]
    UsageDaily.objects.filter(day__gte=first, day__lte=last).delete()
    UsageDaily.objects.bulk_create(rows, batch_size=5000)
    return len(rows)


@transaction.atomic
def usage_rollup_days(*, days: Iterable[dt.date], now: dt.datetime | None = None) -> int:
    """Recompute the rollups of the given days from their records (idempotent). Returns the
    number of rollup rows written. Does not move ``complete_through``."""
    now = now or timezone.now()
    _state_locked()
    return sum(_recompute(day, day, now) for day in sorted(set(days)))


@transaction.atomic
def usage_rollup_catch_up(*, now: dt.datetime | None = None) -> list[dt.date]:
    """Roll up every finished day after ``complete_through`` (from the first record's day
    when nothing was rolled up yet) and advance it. Safe to run twice or concurrently: the
    second run finds nothing to do. Returns the days rolled up."""
    now = now or timezone.now()
    state = _state_locked()
    target = last_finished_day(now)
    if state.complete_through is not None:
        first = state.complete_through + dt.timedelta(days=1)
    else:
        # Records are appended in time order, so the lowest id is (about) the oldest.
        oldest = UsageRecord.objects.order_by("id").values_list("created_at", flat=True)
        first_record = oldest.first()
        first = first_record.astimezone(dt.UTC).date() if first_record else target
    if first > target:
        return []
    _recompute(first, target, now)
    state.complete_through = target
    state.updated_at = now
    state.save(update_fields=["complete_through", "updated_at"])
    return [first + dt.timedelta(days=n) for n in range((target - first).days + 1)]
