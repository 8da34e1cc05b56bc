"""The authorization fast path: one PostgreSQL call (``usage_authorization_open``) for a
token with no cap row to lock, the general path otherwise; both write the same rows."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.db import connection, transaction
from django.forms.models import model_to_dict
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiToken, Membership, User
from tests.helpers import assert_ledger_ok, credit, micro, refresh
from tests.usage.conftest import make_token
from usage import services
from usage import sql as usage_sql
from usage.errors import MinimumBalanceRequired
from usage.models import Authorization, UsageRecord
from usage.pricing import Usage
from wallet import services as wallet_services
from wallet.models import Hold, LedgerEntry, Wallet

pytestmark = pytest.mark.django_db


def _calls(function: str) -> int:
    """How often this session called a PL/pgSQL function (``track_functions``), counting
    calls whose statistics are not yet reported (the test's transaction, and perhaps the
    ones before it): compare before and after."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(SUM(calls), 0) FROM pg_stat_xact_user_functions WHERE funcname = %s",
            [function],
        )
        return int(cursor.fetchone()[0])


@pytest.fixture
def counted() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL track_functions = 'pl'")


def _loaded(secret: str) -> ApiToken:
    """The token as the APIs see it (group, tier, membership and minimum loaded)."""
    return account_services.api_token_authenticate(secret=secret, client_ip="127.0.0.1")


def _authorize(token: ApiToken, request_id: str, **kwargs: Any) -> services.AuthorizationResult:
    return services.authorization_create(
        token=token, model="test-chat", input_tokens=1000, max_tokens=500,
        request_id=request_id, endpoint="chat", client_ip="10.0.0.1", **kwargs,
    )  # fmt: skip


def test_the_function_writes_every_column_of_the_model() -> None:
    listed = re.search(
        r"INSERT INTO usage_authorization \((.*?)\)", usage_sql.AUTHORIZATION_OPEN_V1, re.S
    )
    assert listed is not None
    columns = [name.strip() for name in listed.group(1).split(",")]
    model = [f.column for f in Authorization._meta.concrete_fields if not f.primary_key]
    assert sorted(columns) == sorted(model)


def test_an_uncapped_token_is_authorized_in_one_call_as_the_general_path_would(
    user: User, funded: Wallet, prices: Any, counted: None, settings: Any
) -> None:
    _, secret = make_token(user)
    now = timezone.now()
    opened, held = _calls("usage_authorization_open"), _calls("wallet_hold_create")
    fast = _authorize(_loaded(secret), "fast", now=now)
    assert (_calls("usage_authorization_open"), _calls("wallet_hold_create")) == (
        opened + 1,
        held + 1,
    )

    settings.WALLET_PG_FUNCTIONS = False  # the portable path, as on SQLite
    general = _authorize(_loaded(secret), "general", now=now)
    assert _calls("usage_authorization_open") == opened + 1

    stored = {
        name: model_to_dict(Authorization.objects.get(request_id=name), exclude=["id", "hold"])
        for name in ("fast", "general")
    }
    for row in stored.values():
        row.pop("request_id")
    assert stored["fast"] == stored["general"]
    # What the call returned is what it stored.
    returned = model_to_dict(fast.authorization, exclude=["id", "hold", "request_id"])
    assert returned == stored["fast"]
    assert fast.authorization.pk == Authorization.objects.get(request_id="fast").pk
    hold = Hold.objects.get(pk=fast.authorization.hold_id)
    assert (hold.amount, hold.status, hold.request_id) == (
        fast.authorization.amount_micro,
        Hold.Status.ACTIVE,
        f"{fast.authorization.token_id}:fast",
    )
    assert fast.available_after == general.available_after + fast.authorization.amount_micro
    wallet = refresh(funded)
    assert wallet.held == 2 * fast.authorization.amount_micro
    assert_ledger_ok(wallet)


def test_a_capped_token_takes_the_general_path(
    user: User, funded: Wallet, prices: Any, counted: None
) -> None:
    _, secret = make_token(user, quota_credits="10")
    opened, held = _calls("usage_authorization_open"), _calls("wallet_hold_create")
    assert _authorize(_loaded(secret), "capped").authorization.pk
    assert (_calls("usage_authorization_open"), _calls("wallet_hold_create")) == (
        opened,
        held + 1,
    )


def test_below_the_minimum_the_call_changes_nothing_and_the_refusal_is_explained(
    user: User, funded: Wallet, prices: Any, counted: None
) -> None:
    _, secret = make_token(user)
    wallet_services.wallet_set_min_balance(wallet=funded, min_balance_micro=micro("100") + 1)
    held_before = refresh(funded).held
    opened = _calls("usage_authorization_open")
    with pytest.raises(MinimumBalanceRequired):
        _authorize(_loaded(secret), "below")
    assert _calls("usage_authorization_open") == opened + 1
    assert refresh(funded).held == held_before
    assert not Hold.objects.exists() and not Authorization.objects.exists()
    assert_ledger_ok(funded)


@pytest.mark.parametrize("durable", [True, False])
def test_only_a_non_durable_authorization_skips_the_flush_wait(
    user: User, funded: Wallet, prices: Any, durable: bool
) -> None:
    _, secret = make_token(user)
    with transaction.atomic(), connection.cursor() as cursor:
        _authorize(_loaded(secret), f"d-{durable}", durable=durable)
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == ("on" if durable else "off")


def test_a_replayed_request_id_returns_the_first_authorization(
    user: User, funded: Wallet, prices: Any
) -> None:
    _, secret = make_token(user)
    first = _authorize(_loaded(secret), "again")
    second = _authorize(_loaded(secret), "again")
    assert second.replayed and second.authorization.pk == first.authorization.pk
    assert refresh(funded).held == first.authorization.amount_micro


def test_the_hot_path_statements_are_prepared_once_per_connection(
    user: User, funded: Wallet, prices: Any
) -> None:
    """``config.sql`` asks for prepared statements; Django turns psycopg's off unless the
    settings set ``prepare_threshold``. Without it every request re-plans each query."""
    _, secret = make_token(user)
    for index in range(3):
        _authorize(_loaded(secret), f"p{index}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        executions = dict(cursor.fetchall())
    assert executions.get(account_services._TOKEN_BY_PREFIX.replace("%s", "$1")) == 3
    opens = [
        runs for statement, runs in executions.items() if "usage_authorization_open" in statement
    ]
    assert opens == [3]


# --- Capture in one call -------------------------------------------------------------------


def _capture(authorization: Authorization, **usage: Any) -> services.RecordResult:
    report = services.UsageReport(usage=Usage(**usage), metadata={"retries": 1, "note": "é"})
    return services.authorization_capture(authorization=authorization, report=report)


def test_the_capture_function_writes_every_column_of_the_record() -> None:
    listed = re.search(r"INSERT INTO usage_usagerecord \((.*?)\)", usage_sql.CAPTURE_V1, re.S)
    assert listed is not None
    columns = [name.strip() for name in listed.group(1).split(",")]
    model = [f.column for f in UsageRecord._meta.concrete_fields if not f.primary_key]
    assert columns == model


def test_a_covered_capture_is_one_call_and_records_what_the_general_path_would(
    user: User, funded: Wallet, prices: Any, counted: None, settings: Any
) -> None:
    _, secret = make_token(user)
    token = _loaded(secret)
    fast_auth = _authorize(token, "fast").authorization
    general_auth = _authorize(token, "general").authorization
    calls = _calls("usage_capture")
    fast = _capture(fast_auth, input_tokens=900, output_tokens=300, cached_input_tokens=100)
    assert _calls("usage_capture") == calls + 1
    assert fast.available_after == refresh(funded).available
    settings.WALLET_PG_FUNCTIONS = False
    general = _capture(general_auth, input_tokens=900, output_tokens=300, cached_input_tokens=100)
    assert _calls("usage_capture") == calls + 1

    def stored(record: UsageRecord) -> dict[str, Any]:
        row = model_to_dict(UsageRecord.objects.get(pk=record.pk))
        for name in (
            "id",
            "request_id",
            "authorization",
            "created_at",
            "started_at",
            "finished_at",
            "latency_ms",
            "body_hash",
        ):
            row.pop(name)
        return row

    assert stored(fast.record) == stored(general.record)
    assert model_to_dict(fast.record) == model_to_dict(UsageRecord.objects.get(pk=fast.record.pk))
    assert fast.record.metadata == {"retries": 1, "note": "é"}
    entries = {r.reference_id: (r.kind, r.amount) for r in LedgerEntry.objects.filter(kind="usage")}
    assert entries[str(fast.record.pk)] == entries[str(general.record.pk)]
    assert entries[str(fast.record.pk)] == ("usage", -fast.record.charged_micro)
    assert Hold.objects.get(pk=fast_auth.hold_id).status == Hold.Status.CAPTURED
    assert_ledger_ok(funded)


def test_a_capture_beyond_the_balance_undoes_the_call_and_records_the_shortfall(
    user: User, prices: Any
) -> None:
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "1")
    _, secret = make_token(user)
    authorization = _authorize(_loaded(secret), "short").authorization
    # The call is tried (it is PostgreSQL, the token is uncapped), raises UC001 and is
    # undone with everything it wrote; the general path then charges what is there.
    result = _capture(authorization, input_tokens=1_000_000, output_tokens=1_000_000)
    assert result.record.shortfall_micro > 0
    assert result.record.charged_micro == micro("1")
    assert UsageRecord.objects.count() == 1
    assert LedgerEntry.objects.filter(kind="usage").count() == 1
    assert refresh(wallet).balance == 0
    assert_ledger_ok(wallet)


def test_capturing_twice_replays_without_a_second_record(
    user: User, funded: Wallet, prices: Any
) -> None:
    _, secret = make_token(user)
    authorization = _authorize(_loaded(secret), "twice").authorization
    first = _capture(authorization, input_tokens=10, output_tokens=5)
    again = Authorization.objects.select_related("hold", "price", "token").get(pk=authorization.pk)
    again.settled_at = None  # as a concurrent capture would have read it
    second = _capture(again, input_tokens=10, output_tokens=5)
    assert second.replayed and second.record.pk == first.record.pk
    assert UsageRecord.objects.count() == 1
    assert_ledger_ok(funded)


@pytest.mark.parametrize(
    ("period", "started_days_ago"),
    [("", None), ("daily", None), ("daily", 0), ("daily", 1), ("weekly", 8), ("monthly", 0)],
)
def test_the_one_call_counts_token_and_member_spend_as_the_general_path(
    org_member: tuple[User, Any],
    prices: Any,
    settings: Any,
    counted: None,
    period: str,
    started_days_ago: int | None,
) -> None:
    """``usage_capture_counted`` counts the charge against the token (used, budget period)
    and the member (month) exactly as ``api_token_spend_add`` and ``membership_spend_add``
    do on the general path, from every budget state."""
    member, organization = org_member
    budget = {"budget_period": period, "budget_credits": "50"} if period else {}
    secrets = [make_token(member, organization=organization, **budget)[1] for _ in range(2)]
    start = timezone.now().date() - dt.timedelta(days=started_days_ago or 0)
    for secret in secrets:
        token = _loaded(secret)
        ApiToken.objects.filter(pk=token.pk).update(
            used_micro=7,
            budget_spent_micro=11 if period else 0,
            budget_period_start=start if started_days_ago is not None else None,
        )
    membership = Membership.objects.get(user=member, organization=organization)
    last_month = account_services.month_start(timezone.now()) - dt.timedelta(days=1)
    Membership.objects.filter(pk=membership.pk).update(
        spend_month=last_month.replace(day=1), spend_month_micro=13
    )

    def counters(secret: str) -> tuple[Any, ...]:
        token = ApiToken.objects.get(pk=_loaded(secret).pk)
        member_row = Membership.objects.get(pk=membership.pk)
        return (
            token.used_micro,
            token.budget_spent_micro,
            token.budget_period_start,
            member_row.spend_month,
            member_row.spend_month_micro,
        )

    fast_auth = _authorize(_loaded(secrets[0]), "fast").authorization
    general_auth = _authorize(_loaded(secrets[1]), "general").authorization
    calls = _calls("usage_capture_counted")
    fast = _capture(fast_auth, input_tokens=900, output_tokens=300)
    assert _calls("usage_capture_counted") == calls + 1
    fast_counters = counters(secrets[0])
    # The member's count is shared: put it back before the general path counts again.
    Membership.objects.filter(pk=membership.pk).update(
        spend_month=last_month.replace(day=1), spend_month_micro=13
    )
    settings.WALLET_PG_FUNCTIONS = False
    general = _capture(general_auth, input_tokens=900, output_tokens=300)
    assert fast.record.charged_micro == general.record.charged_micro > 0
    assert fast_counters == counters(secrets[1])
    assert fast_counters[0] == 7 + fast.record.charged_micro
    assert fast_counters[4] == fast.record.charged_micro  # a new month starts the count again


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_capture_is_one_statement_and_a_second_one_replays(
    user: User, funded: Wallet, prices: Any
) -> None:
    """As the API and the settlers run it: no transaction around the call (autocommit),
    and a capture racing a finished one (``UC002``) changes nothing and replays."""
    token, secret = make_token(user)
    authorization = _authorize(_loaded(secret), "alone").authorization
    assert not connection.in_atomic_block
    first = _capture(authorization, input_tokens=10, output_tokens=5)
    used = ApiToken.objects.get(pk=token.pk).used_micro
    assert used == first.record.charged_micro > 0
    stale = Authorization.objects.select_related("hold", "price", "token").get(pk=authorization.pk)
    stale.settled_at = None  # as a concurrent capture would have read it
    second = _capture(stale, input_tokens=10, output_tokens=5)
    assert second.replayed and second.record.pk == first.record.pk
    assert ApiToken.objects.get(pk=token.pk).used_micro == used  # the racer counted nothing
    assert UsageRecord.objects.count() == 1
    assert_ledger_ok(funded)
