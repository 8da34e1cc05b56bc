"""Spend controls: the minimum balance to start a request, per-token budgets per calendar
period, and per-token rate limits (rolling window in Redis, failing open)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import pytest
from django.test import override_settings

from accounts import services as account_services
from accounts.errors import InvalidLimit
from accounts.models import ApiToken, User
from tests.helpers import assert_ledger_ok, credit, ledger_state, micro, refresh
from tests.redis_server import free_port
from tests.usage.conftest import Api, counts, error_code, make_token
from usage import pricing, selectors, services
from usage.errors import MinimumBalanceRequired, RateLimitExceeded, TokenBudgetExceeded
from wallet import money
from wallet import selectors as wallet_selectors
from wallet import services as wallet_services
from wallet.models import Wallet

pytestmark = pytest.mark.django_db

AUTHORIZE = "/api/v1/authorizations"
UTC = dt.UTC
# 1000 output tokens of test-chat ($10/M) = $0.01 = 10,000 µcr at 1 credit per USD.
TEN_MILLI = 10_000


def authorize(api: Api, **body: Any) -> Any:
    body.setdefault("model", "test-chat")
    body.setdefault("input_tokens", 0)
    body.setdefault("max_tokens", 1000)
    return api.post(AUTHORIZE, body)


def fresh(token: ApiToken) -> ApiToken:
    """The token as the ORM loads it (not through authentication)."""
    return ApiToken.objects.select_related("group__tier", "membership").get(pk=token.pk)


def hold(token: ApiToken, request_id: str, now: dt.datetime, max_tokens: int = 1000) -> Any:
    return services.authorization_create(
        token=fresh(token),
        model="test-chat",
        input_tokens=0,
        max_tokens=max_tokens,
        request_id=request_id,
        now=now,
    )


def spend(token: ApiToken, request_id: str, now: dt.datetime, output_tokens: int = 1000) -> Any:
    return services.usage_record_create_oneshot(
        token=fresh(token),
        model="test-chat",
        request_id=request_id,
        report=services.UsageReport(
            usage=pricing.Usage(output_tokens=output_tokens),
            started_at=now - dt.timedelta(seconds=1),
            finished_at=now,
        ),
        now=now,
    )


def fund(wallet: Wallet, amount_micro: int) -> None:
    credit(wallet, str(money.micro_to_credits(amount_micro)))


# --- Minimum balance --------------------------------------------------------------------


@override_settings(METERING_MIN_BALANCE_CREDITS="", CREDITS_PER_USD=1000)
def test_the_default_minimum_is_the_credit_value_of_ten_cents() -> None:
    assert wallet_selectors.wallet_min_balance_default() == micro("100")


@override_settings(METERING_MIN_BALANCE_CREDITS="")
def test_the_default_minimum_at_one_credit_per_dollar() -> None:
    assert wallet_selectors.wallet_min_balance_default() == micro("0.1")


@override_settings(METERING_MIN_BALANCE_CREDITS="0.5")
def test_a_request_starts_exactly_at_the_minimum_and_not_one_microcredit_below(
    user: User, prices: Any
) -> None:
    wallet = Wallet.objects.get(user=user)
    fund(wallet, micro("0.5"))
    _, secret = make_token(user)
    api = Api(secret)
    assert authorize(api, request_id="at-min").status_code == 201  # 0.5 available: allowed
    # 0.49 available now (0.01 held): below the minimum.
    before = ledger_state(wallet), counts()
    response = authorize(api, request_id="below-min")
    assert response.status_code == 402
    body = response.json()["error"]
    assert body["code"] == "minimum_balance_required"
    assert body["detail"]["limit_source"] == "minimum_balance"
    assert body["detail"]["minimum"] == micro("0.5")
    assert body["detail"]["available"] == micro("0.5") - TEN_MILLI
    assert (ledger_state(wallet), counts()) == before
    assert_ledger_ok(wallet)


def test_a_wallet_overrides_the_minimum(user: User, funded: Wallet, prices: Any) -> None:
    token, secret = make_token(user)
    wallet_services.wallet_set_min_balance(wallet=funded, min_balance_micro=micro("100"))
    assert authorize(Api(secret), request_id="r1").status_code == 201  # exactly 100
    # The same through the service with a token loaded by the ORM (no joined minimum).
    with pytest.raises(MinimumBalanceRequired) as refused:
        hold(token, "r2", dt.datetime.now(UTC))
    assert refused.value.detail["minimum"] == micro("100")
    wallet_services.wallet_set_min_balance(wallet=funded, min_balance_micro=None)
    assert hold(token, "r3", dt.datetime.now(UTC)).authorization.pk
    assert_ledger_ok(funded)


@override_settings(METERING_MIN_BALANCE_CREDITS="1")
def test_below_the_minimum_and_the_cost_the_refusal_names_the_minimum(
    user: User, prices: Any
) -> None:
    wallet = Wallet.objects.get(user=user)
    fund(wallet, 5_000)
    _, secret = make_token(user)
    response = authorize(Api(secret))  # 10,000 µcr wanted, 5,000 there, minimum 1 credit
    assert response.status_code == 402
    assert response.json()["error"]["detail"]["limit_source"] == "minimum_balance"


@override_settings(METERING_MIN_BALANCE_CREDITS="1")
def test_a_one_shot_record_below_the_minimum_is_refused_and_nothing_is_charged(
    user: User, prices: Any
) -> None:
    wallet = Wallet.objects.get(user=user)
    fund(wallet, micro("1.005"))
    token, _ = make_token(user)
    now = dt.datetime.now(UTC)
    spend(token, "one", now, output_tokens=600)  # 1.005 available before: fine; 0.999 after
    before = ledger_state(wallet), counts()
    with pytest.raises(MinimumBalanceRequired):
        spend(token, "two", now, output_tokens=10)
    assert (ledger_state(wallet), counts()) == before
    assert_ledger_ok(wallet)


# --- Budgets per period ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "start", "reset"),
    [
        ("daily", "2026-03-15T23:59:59", "2026-03-15", "2026-03-16"),
        ("daily", "2026-03-16T00:00:00", "2026-03-16", "2026-03-17"),
        ("weekly", "2026-03-15T12:00:00", "2026-03-09", "2026-03-16"),  # a Sunday
        ("weekly", "2026-03-16T00:00:00", "2026-03-16", "2026-03-23"),  # a Monday
        ("monthly", "2026-02-28T23:59:59", "2026-02-01", "2026-03-01"),
        ("monthly", "2026-12-31T10:00:00", "2026-12-01", "2027-01-01"),
    ],
)
def test_budget_periods_are_utc_calendar_periods(
    period: str, now: str, start: str, reset: str
) -> None:
    moment = dt.datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert account_services.budget_period_bounds(period, moment) == (
        dt.date.fromisoformat(start),
        dt.datetime.fromisoformat(reset).replace(tzinfo=UTC),
    )
    # The same instant seen from another time zone is the same period.
    elsewhere = moment.astimezone(dt.timezone(dt.timedelta(hours=-8)))
    assert account_services.budget_period_bounds(period, elsewhere) == (
        account_services.budget_period_bounds(period, moment)
    )


def test_a_daily_budget_allows_exactly_the_limit_and_resets_at_midnight(
    user: User, funded: Wallet, prices: Any
) -> None:
    token, _ = make_token(user, budget_period="daily", budget_credits="0.03")
    evening = dt.datetime(2027, 3, 15, 23, 0, tzinfo=UTC)
    for i in range(3):
        spend(token, f"r{i}", evening)  # 3 x 0.01 = exactly the budget
    before = ledger_state(funded), counts()
    with pytest.raises(TokenBudgetExceeded) as refused:
        spend(token, "one-more", evening, output_tokens=1)  # one µcr over
    detail = refused.value.detail
    assert detail["limit_source"] == "token_budget"
    assert detail["spent_this_period"] == 3 * TEN_MILLI
    assert detail["resets_at"] == "2027-03-16T00:00:00Z"
    assert detail["retry_after"] == 3600
    assert (ledger_state(funded), counts()) == before
    # One second before the reset: still refused; at the reset: a new budget.
    with pytest.raises(TokenBudgetExceeded) as refused:
        hold(token, "late", dt.datetime(2027, 3, 15, 23, 59, 59, tzinfo=UTC))
    assert refused.value.detail["retry_after"] == 1
    assert hold(token, "new-day", dt.datetime(2027, 3, 16, tzinfo=UTC)).authorization.pk
    status = selectors.token_budget_status(
        token=fresh(token), now=dt.datetime(2027, 3, 16, 0, 0, 1, tzinfo=UTC)
    )
    assert status is not None
    assert (status.used_micro, status.in_flight_micro, status.limit_micro) == (
        0,
        TEN_MILLI,
        3 * TEN_MILLI,
    )
    assert status.resets_at == dt.datetime(2027, 3, 17, tzinfo=UTC)
    assert_ledger_ok(funded)


def test_credits_in_flight_count_against_the_budget(
    user: User, funded: Wallet, prices: Any
) -> None:
    token, _ = make_token(user, budget_period="weekly", budget_credits="0.02")
    now = dt.datetime.now(UTC)
    first = hold(token, "a", now)
    hold(token, "b", now)
    with pytest.raises(TokenBudgetExceeded):
        hold(token, "c", now)
    services.authorization_release(authorization=first.authorization)
    assert hold(token, "c", now).authorization.pk
    assert_ledger_ok(funded)


def test_a_capture_counts_in_the_budget_and_the_refusal_has_retry_after(
    user: User, funded: Wallet, prices: Any
) -> None:
    _, secret = make_token(user, budget_period="monthly", budget_credits="0.015")
    api = Api(secret)
    authorization = authorize(api, request_id="a").json()
    captured = api.post(
        f"/api/v1/authorizations/{authorization['id']}/capture", {"output_tokens": 1000}
    )
    assert captured.status_code == 200
    response = authorize(api, request_id="b")  # 0.01 spent + 0.01 wanted > 0.015
    assert response.status_code == 402
    assert error_code(response) == "token_budget_exceeded"
    retry_after = int(response["Retry-After"])
    _, resets_at = account_services.budget_period_bounds("monthly", dt.datetime.now(UTC))
    expected = (resets_at - dt.datetime.now(UTC)).total_seconds()
    assert abs(retry_after - expected) <= 5
    assert response.json()["error"]["detail"]["retry_after"] == retry_after
    # The token shows used / limit / resets-at.
    shown = api.get("/api/v1/wallet").json()["token"]["budget"]
    assert shown["used"] == "0.010000"
    assert shown["limit"] == "0.015000"
    assert shown["period"] == "monthly"
    assert shown["resets_at"] == resets_at.isoformat().replace("+00:00", "Z")
    assert_ledger_ok(funded)


def test_a_shortfall_is_taken_back_from_the_budget(user: User, prices: Any) -> None:
    wallet = Wallet.objects.get(user=user)
    fund(wallet, TEN_MILLI)
    token, _ = make_token(user, budget_period="daily", budget_credits="1")
    now = dt.datetime.now(UTC)
    authorization = hold(token, "a", now, max_tokens=100).authorization
    result = services.authorization_capture(
        authorization=authorization,
        report=services.UsageReport(usage=pricing.Usage(output_tokens=3000)),
        now=now,
    )
    assert result.record.shortfall_micro == 2 * TEN_MILLI
    assert account_services.api_token_budget_spent(token=fresh(token), now=now) == TEN_MILLI
    assert_ledger_ok(wallet)


def test_budget_settings_are_validated(user: User, funded: Wallet) -> None:
    with pytest.raises(InvalidLimit):
        make_token(user, budget_period="daily")
    with pytest.raises(InvalidLimit):
        make_token(user, budget_credits="5")
    with pytest.raises(InvalidLimit):
        make_token(user, budget_period="hourly", budget_credits="5")
    with pytest.raises(InvalidLimit):
        make_token(user, rate_limit_rpm=0)
    with pytest.raises(InvalidLimit):
        make_token(user, rate_limit_rpm=2**31)  # more than the column holds
    assert make_token(user, rate_limit_rpm=10**9, rate_limit_tpm=10**15)[0].rate_limit_tpm
    token, _ = make_token(user, budget_period="daily", budget_credits="5")
    updated = account_services.api_token_update(token=token, budget_credits="7.5")
    assert (updated.budget_period, updated.budget_micro) == ("daily", micro("7.5"))
    cleared = account_services.api_token_update(token=token, budget_period="", budget_credits=None)
    assert (cleared.budget_period, cleared.budget_micro) == ("", None)
    assert selectors.token_budget_status(token=cleared) is None


# --- Rate limits ------------------------------------------------------------------------


def test_requests_per_minute_exactly_at_the_limit_then_429_until_the_window_rolls(
    user: User, funded: Wallet, prices: Any
) -> None:
    token, _ = make_token(user, rate_limit_rpm=3)
    t0 = dt.datetime(2027, 3, 15, 12, 0, 0, tzinfo=UTC)
    hold(token, "a", t0)
    hold(token, "b", t0)
    hold(token, "c", t0 + dt.timedelta(seconds=30))  # 3: exactly the limit
    with pytest.raises(RateLimitExceeded) as refused:
        hold(token, "d", t0 + dt.timedelta(seconds=45))
    detail = refused.value.detail
    assert (detail["limit_source"], detail["limit"], detail["maximum"]) == ("rate_limit", "rpm", 3)
    assert detail["retry_after"] == 15  # the two requests at t0 leave the window at t0+60
    with pytest.raises(RateLimitExceeded):
        hold(token, "d", t0 + dt.timedelta(seconds=59))
    # A rolling window: at t0+60 the first two are gone, the one at t0+30 is not.
    hold(token, "d", t0 + dt.timedelta(seconds=60))
    hold(token, "e", t0 + dt.timedelta(seconds=61))
    with pytest.raises(RateLimitExceeded) as refused:
        hold(token, "f", t0 + dt.timedelta(seconds=62))
    assert refused.value.detail["retry_after"] == 28
    assert_ledger_ok(funded)


def test_tokens_per_minute_count_the_estimate(user: User, funded: Wallet, prices: Any) -> None:
    token, _ = make_token(user, rate_limit_tpm=3000)
    now = dt.datetime(2027, 3, 15, 12, 0, 0, tzinfo=UTC)
    hold(token, "a", now, max_tokens=1000)
    hold(token, "b", now, max_tokens=2000)  # 3000: exactly the limit
    with pytest.raises(RateLimitExceeded) as refused:
        hold(token, "c", now, max_tokens=1)
    assert refused.value.detail["limit"] == "tpm"
    assert refused.value.detail["current"] == 3000
    assert_ledger_ok(funded)


def test_tokens_per_minute_are_recounted_from_real_usage_when_settled(
    user: User, funded: Wallet, prices: Any
) -> None:
    """The estimate (input + output reserve) is counted at authorization; the capture
    replaces it with the tokens really used, a release or failure with none."""
    token, _ = make_token(user, rate_limit_tpm=3000)
    now = dt.datetime(2027, 3, 15, 12, 0, 0, tzinfo=UTC)
    first = hold(token, "a", now, max_tokens=2000).authorization
    released = hold(token, "b", now, max_tokens=1000).authorization  # 3000: the limit
    with pytest.raises(RateLimitExceeded):
        hold(token, "c", now, max_tokens=500)
    later = now + dt.timedelta(seconds=5)
    services.authorization_capture(
        authorization=first,
        report=services.UsageReport(usage=pricing.Usage(input_tokens=100, output_tokens=400)),
        now=later,
    )  # 2000 counted -> 500 used: 1,500 of the minute back
    hold(token, "c", later, max_tokens=1500)  # 500 + 1000 + 1500 = 3000: exactly the limit
    with pytest.raises(RateLimitExceeded):
        hold(token, "d", later, max_tokens=1)
    services.authorization_release(authorization=released, now=later)  # 1000 back
    services.authorization_release(authorization=released, now=later)  # twice: no more
    hold(token, "d", later, max_tokens=1000)
    with pytest.raises(RateLimitExceeded) as refused:
        hold(token, "e", later, max_tokens=1)
    assert refused.value.detail["current"] == 3000
    # Settled after its bucket left the window, a request changes nothing in the new one.
    an_hour = now + dt.timedelta(hours=1)
    hold(token, "f", an_hour, max_tokens=3000)
    services.authorization_release(
        authorization=services.Authorization.objects.get(request_id="d"), now=an_hour
    )
    with pytest.raises(RateLimitExceeded):
        hold(token, "g", an_hour, max_tokens=1)
    assert_ledger_ok(funded)


def test_a_rate_limited_authorization_is_a_429_with_retry_after(
    user: User, funded: Wallet, prices: Any
) -> None:
    _, secret = make_token(user, rate_limit_rpm=1)
    api = Api(secret)
    assert authorize(api, request_id="a").status_code == 201
    before = ledger_state(funded), counts()
    response = authorize(api, request_id="b")
    assert response.status_code == 429
    assert error_code(response) == "rate_limit_exceeded"
    assert response.json()["error"]["detail"]["limit_source"] == "rate_limit"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert (ledger_state(funded), counts()) == before


def test_a_refused_request_counts_in_no_window(user: User, funded: Wallet, prices: Any) -> None:
    token, _ = make_token(user, rate_limit_rpm=5, rate_limit_tpm=1000)
    now = dt.datetime(2027, 3, 15, 12, 0, 0, tzinfo=UTC)
    with pytest.raises(RateLimitExceeded):
        hold(token, "big", now, max_tokens=1001)  # over the TPM: not counted as a request
    for i in range(5):
        hold(token, f"r{i}", now, max_tokens=200)
    assert_ledger_ok(funded)


def test_concurrent_hits_never_pass_the_limit(user: User, funded: Wallet, prices: Any) -> None:
    """The Lua script checks and counts in one step: 40 threads, a limit of 7."""
    from config.ratelimit import RollingLimit
    from tests.wallet.test_concurrency import run_together

    limiter = RollingLimit("concurrency-test")
    now = time.time()
    results = run_together(40, lambda i: limiter.hit("t1", [("rpm", 7, 1)], now=now))
    assert sum(r is None for r in results) == 7
    assert all(r is None or r.limit == "rpm" for r in results)


# --- Redis unavailable: limits fail open, money never does ----------------------------


def test_redis_stopped_mid_test_serving_continues_and_the_balance_stays_exact(
    user: User, funded: Wallet, prices: Any, own_redis: Any, caplog: Any
) -> None:
    from config import ratelimit

    ratelimit._warn_state["last"] = 0.0
    token, secret = make_token(user, rate_limit_rpm=2, budget_period="daily", budget_credits="0.05")
    api = Api(secret)

    def run(request_id: str) -> Any:
        response = authorize(api, request_id=request_id)
        if response.status_code != 201:
            return response
        return api.post(
            f"/api/v1/authorizations/{response.json()['id']}/capture", {"output_tokens": 1000}
        )

    assert run("a").status_code == 200
    assert run("b").status_code == 200
    assert run("c").status_code == 429  # the limit works while Redis is up
    own_redis.kill()
    own_redis.wait()
    with caplog.at_level(logging.WARNING, logger="config.ratelimit"):
        assert run("c").status_code == 200  # fails open
        assert run("d").status_code == 200
        assert run("e").status_code == 200
        # Budgets never fail open: 5 x 0.01 spent, the sixth is refused.
        refused = run("f")
    assert refused.status_code == 402
    assert refused.json()["error"]["detail"]["limit_source"] == "token_budget"
    warnings = [r for r in caplog.records if "failing open" in r.getMessage()]
    assert len(warnings) == 1  # once, not per request
    wallet = refresh(funded)
    assert wallet.balance == micro("100") - 5 * TEN_MILLI
    assert wallet.held == 0
    assert fresh(token).used_micro == 5 * TEN_MILLI
    assert_ledger_ok(funded)


def test_an_unreachable_limiter_lets_requests_through(
    user: User, funded: Wallet, prices: Any, settings: Any
) -> None:
    settings.RATE_LIMIT_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    token, _ = make_token(user, rate_limit_rpm=1)
    now = dt.datetime.now(UTC)
    for i in range(3):
        assert hold(token, f"r{i}", now).authorization.pk
    assert refresh(funded).held == 3 * TEN_MILLI
    assert_ledger_ok(funded)


def test_the_token_command_sets_budgets_limits_and_logging(user: User) -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    call_command(
        "create_api_token",
        "--email", user.email, "--name", "capped", "--budget", "weekly", "25",
        "--rpm", "60", "--tpm", "90000", "--log-content",
        stdout=StringIO(), stderr=StringIO(),
    )  # fmt: skip
    token = ApiToken.objects.get(name="capped")
    assert (token.budget_period, token.budget_micro) == ("weekly", micro("25"))
    assert (token.rate_limit_rpm, token.rate_limit_tpm, token.log_content) == (60, 90000, True)
    with pytest.raises(CommandError):
        call_command(
            "create_api_token",
            "--email", user.email, "--name", "bad", "--budget", "hourly", "5",
            stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip


def test_staff_set_budgets_and_limits_in_the_admin_and_see_the_budget(
    admin_client: Any, user: User, funded: Wallet, prices: Any
) -> None:
    token, _ = make_token(user)
    form = {
        "name": "capped",
        "group": token.group_id,
        "quota_micro": "",
        "expires_at_0": "",
        "expires_at_1": "",
        "allowed_models": "[]",
        "allowed_ips": "[]",
        "budget_period": "daily",
        "budget_micro": "",
        "rate_limit_rpm": "30",
        "rate_limit_tpm": "",
        "log_content": "on",
    }
    url = f"/admin/accounts/apitoken/{token.pk}/change/"
    refused = admin_client.post(url, form)  # a period without an amount
    assert refused.status_code == 200
    assert fresh(token).budget_period == ""
    response = admin_client.post(url, {**form, "budget_micro": "2000000"})
    assert response.status_code == 302, response.content[:2000]
    changed = fresh(token)
    assert (changed.budget_period, changed.budget_micro) == ("daily", 2_000_000)
    assert (changed.rate_limit_rpm, changed.rate_limit_tpm, changed.log_content) == (30, None, True)
    hold(token, "a", dt.datetime.now(UTC))
    page = admin_client.get(url).content.decode()
    assert "0.00 used (+0.01 in flight) of 2.00 credits, daily" in page


def test_the_per_token_throttle_fails_open_when_the_cache_redis_is_gone(settings: Any) -> None:
    from config.ratelimit import Window

    settings.CACHES = {
        "default": {
            "BACKEND": "config.cache.SharedRedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
        }
    }
    window = Window("api-token", limit=1, seconds=60, fail_open=True)  # as the throttles use it
    assert [window.hit("t"), window.hit("t")] == [0, 0]  # never over the limit
