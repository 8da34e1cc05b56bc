"""Daily rollups: recomputed whole from the records (running twice changes nothing), and the
console's reports are the same whether a day comes from the rollups or the records."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from itertools import count
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import ApiToken, User
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, credit
from tests.usage.conftest import make_token
from usage import consumption, rollups, services, tasks
from usage.consumption import ReportFilters
from usage.models import UsageDaily, UsageRecord, UsageRollupState
from usage.pricing import Usage
from wallet.models import Wallet

_ids = count()
TODAY = timezone.now().astimezone(dt.UTC).date()


def record(
    token: ApiToken, *, days_ago: int, model: str = "test-chat", status: str = "succeeded"
) -> UsageRecord:
    result = services.usage_record_create_oneshot(
        token=token,
        model=model,
        report=services.UsageReport(
            usage=Usage(input_tokens=1000, output_tokens=200), status=status
        ),
        request_id=f"req-{next(_ids)}",
    )
    when = timezone.now() - dt.timedelta(days=days_ago)
    UsageRecord.objects.filter(pk=result.record.pk).update(created_at=when)
    return UsageRecord.objects.get(pk=result.record.pk)


@pytest.fixture
def history(user: User, prices: Any) -> dict[str, Any]:
    """Records over five days, two models, two tokens, one failed; and another user's."""
    credit(Wallet.objects.get(user=user), "100")
    first, _ = make_token(user)
    second, _ = make_token(user)
    for days_ago in (4, 3, 3, 1, 0, 0):
        record(first, days_ago=days_ago)
    record(second, days_ago=3, model="test-reasoner")
    record(second, days_ago=1, model="test-search", status="failed")
    record(second, days_ago=0, model="test-reasoner")
    other = UserFactory()
    credit(Wallet.objects.get(user=other), "100")
    record(make_token(other)[0], days_ago=2)
    return {"user": user, "wallet": Wallet.objects.get(user=user), "tokens": (first, second)}


def rows() -> list[tuple[Any, ...]]:
    return sorted(
        UsageDaily.objects.values_list(
            "day", "wallet_id", "user_id", "token_id", "model", "status", "requests",
            "input_tokens", "output_tokens", "charged_micro",
        )
    )  # fmt: skip


def test_catch_up_rolls_up_finished_days_once_and_a_rerun_changes_nothing(history) -> None:
    done = rollups.usage_rollup_catch_up()
    assert done[0] == TODAY - dt.timedelta(days=4) and done[-1] == TODAY - dt.timedelta(days=1)
    first = rows()
    assert first and all(r[0] < TODAY for r in first)  # today stays live
    assert rollups.usage_rollup_catch_up() == []
    assert rollups.usage_rollup_days(days=[TODAY - dt.timedelta(days=3)]) > 0
    tasks.usage_rollup_daily.delay([str(TODAY - dt.timedelta(days=3))])
    assert rows() == first
    assert UsageRollupState.objects.get().complete_through == TODAY - dt.timedelta(days=1)
    assert_ledger_ok()


def test_rollups_sum_exactly_what_the_records_hold(history) -> None:
    rollups.usage_rollup_catch_up()
    rolled = UsageDaily.objects.filter(day__lt=TODAY)
    records = UsageRecord.objects.filter(created_at__lt=rollups.day_start(TODAY))
    assert sum(r.requests for r in rolled) == records.count()
    assert sum(r.charged_micro for r in rolled) == sum(r.charged_micro for r in records)


FILTERS = [
    ReportFilters(),
    ReportFilters(model="test-reasoner"),
    ReportFilters(status="failed"),
    ReportFilters(date_from=TODAY - dt.timedelta(days=3), date_to=TODAY - dt.timedelta(days=1)),
    ReportFilters(date_from=TODAY - dt.timedelta(days=1)),
    ReportFilters(date_to=TODAY - dt.timedelta(days=3)),
]


@pytest.mark.parametrize("filters", FILTERS)
def test_a_report_is_the_same_from_records_and_from_rollups(history, filters) -> None:
    user, wallet = history["user"], history["wallet"]
    live = consumption.usage_report(wallet_id=wallet.pk, user=user, filters=filters)
    live_totals = consumption.usage_totals(wallet_id=wallet.pk, user=user, filters=filters)
    rollups.usage_rollup_catch_up()
    mixed = consumption.usage_report(wallet_id=wallet.pk, user=user, filters=filters)
    assert mixed.daily == live.daily
    assert mixed.models == live.models
    assert mixed.total == live.total == live_totals
    assert consumption.usage_totals(wallet_id=wallet.pk, user=user, filters=filters) == live_totals


def test_a_token_filter_and_the_owner_scope_hold_in_both_sources(history) -> None:
    user, wallet = history["user"], history["wallet"]
    second = history["tokens"][1]
    rollups.usage_rollup_catch_up()
    report = consumption.usage_report(
        wallet_id=wallet.pk, user=user, filters=ReportFilters(token_id=second.pk)
    )
    assert report.total.requests == 3
    assert {m.model for m in report.models} == {"test-reasoner", "test-search"}
    everything = consumption.usage_totals(wallet_id=wallet.pk, user=user)
    assert everything.requests == 9  # the other user's record is not counted


def test_todays_records_are_read_live_after_a_rollup(history) -> None:
    user, wallet = history["user"], history["wallet"]
    rollups.usage_rollup_catch_up()
    before = consumption.usage_totals(wallet_id=wallet.pk, user=user)
    new = record(history["tokens"][0], days_ago=0)
    after = consumption.usage_totals(wallet_id=wallet.pk, user=user)
    assert after.requests == before.requests + 1
    assert after.charged_micro == before.charged_micro + new.charged_micro


def test_a_day_is_not_final_until_the_grace_after_midnight(settings) -> None:
    settings.USAGE_ROLLUP_GRACE_SECONDS = 600
    midnight = dt.datetime.combine(TODAY, dt.time.min, tzinfo=dt.UTC)
    assert rollups.last_finished_day(midnight + dt.timedelta(minutes=5)) == TODAY - dt.timedelta(
        days=2
    )
    assert rollups.last_finished_day(midnight + dt.timedelta(minutes=11)) == TODAY - dt.timedelta(
        days=1
    )


def test_the_command_catches_up_and_recomputes_given_days(history, capsys) -> None:
    call_command("usage_rollup")
    assert "Rolled up 4 day(s)" in capsys.readouterr().out
    call_command("usage_rollup")
    assert "Nothing to roll up" in capsys.readouterr().out
    day = TODAY - dt.timedelta(days=3)
    call_command("usage_rollup", "--day", str(day))
    assert "Recomputed 1 day(s)" in capsys.readouterr().out
    with pytest.raises(Exception, match="YYYY-MM-DD"):
        call_command("usage_rollup", "--day", "yesterday")


def test_a_wallet_without_usage_reports_zero(user) -> None:
    wallet = Wallet.objects.get(user=user)
    totals = consumption.usage_totals(wallet_id=wallet.pk, user=user)
    assert (totals.requests, totals.charged_micro) == (0, 0)
    assert Decimal(totals.tokens) == 0
