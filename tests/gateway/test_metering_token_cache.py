"""What the metering fast path keeps in memory (``config.cached_reads``: tokens, current
prices, the authorizations a process opened): a token's next requests are served without
reading the token, the price or the authorization again, and no change to any of them,
made by any process or statement, is missed: the change is written here with plain SQL,
behind the memo's back, as another web process or an operator's console would, and the
very next request answers from it with nothing written on the stale state."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiToken, User
from config import cached_reads
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, ledger_state
from tests.usage.conftest import make_token
from usage import fastpath
from usage import services as usage_services
from usage.models import Authorization, UsageRecord
from wallet import services as wallet_services
from wallet.models import Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

AUTHORIZE = "/api/v1/authorizations"
USAGE = {"input_tokens": 120, "output_tokens": 30}


@pytest.fixture
def http(gateway: Any, settings: Any) -> Iterator[httpx.Client]:
    settings.METERING_FAST_PATH = True
    assert cached_reads.memo("tokens") is not None, "on by default on PostgreSQL"
    cached_reads.clear()
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


@pytest.fixture
def issued(customer: User, funded_wallet: Wallet, chat_price: Any) -> tuple[ApiToken, str]:
    return make_token(customer, scopes=("metering",))


def _hits(name: str = "tokens") -> int:
    kept = cached_reads.memo(name)
    assert kept is not None
    return kept.hits


def _post(http: httpx.Client, path: str, secret: str, body: Any) -> httpx.Response:
    before = fastpath.served
    response = http.post(
        path,
        content=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    assert fastpath.served == before + 1, "served by the wrong path"
    return response


def _authorize(http: httpx.Client, secret: str, request_id: str, **extra: Any) -> httpx.Response:
    body = {
        "model": "test-chat",
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 100,
        "request_id": request_id,
        **extra,
    }
    return _post(http, AUTHORIZE, secret, body)


def _sql(statement: str, params: list[Any]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def test_a_tokens_next_requests_are_served_from_the_cache(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    token, secret = issued
    hits, rechecked = _hits(), fastpath.rechecked
    first = _authorize(http, secret, "c1")
    assert first.status_code == 201
    assert _hits() == hits  # read from the database, then kept
    second = _authorize(http, secret, "c2")
    assert second.status_code == 201
    captured = _post(http, f"{AUTHORIZE}/{second.json()['id']}/capture", secret, USAGE)
    assert captured.status_code == 200
    assert captured.headers["x-credits-remaining"]
    assert _hits() == hits + 2
    assert fastpath.rechecked == rechecked  # every answer confirmed by its function
    assert UsageRecord.objects.get().charged_micro == 120 * 5 // 2 + 30 * 10
    # The spend counters written by the capture are not part of the token's state.
    assert ApiToken.objects.get(pk=token.pk).used_micro == 600
    assert _authorize(http, secret, "c3").status_code == 201
    assert _hits() == hits + 3
    assert fastpath.rechecked == rechecked
    assert_ledger_ok(funded_wallet)


def _revoke(token: ApiToken) -> None:
    _sql("UPDATE accounts_apitoken SET status = 'revoked' WHERE id = %s", [token.pk])


def _deactivate_owner(token: ApiToken) -> None:
    _sql("UPDATE accounts_user SET is_active = false WHERE id = %s", [token.user_id])


def _expire(token: ApiToken) -> None:
    past = timezone.now() - dt.timedelta(seconds=1)
    _sql("UPDATE accounts_apitoken SET expires_at = %s WHERE id = %s", [past, token.pk])


def _read_only(token: ApiToken) -> None:
    _sql("UPDATE accounts_apitoken SET scopes = '[\"read\"]' WHERE id = %s", [token.pk])


def _other_models_only(token: ApiToken) -> None:
    _sql(
        "UPDATE accounts_apitoken SET allowed_models = '[\"other-model\"]' WHERE id = %s",
        [token.pk],
    )


def _other_network_only(token: ApiToken) -> None:
    _sql("UPDATE accounts_apitoken SET allowed_ips = '[\"10.0.0.0/8\"]' WHERE id = %s", [token.pk])


def _group_other_models_only(token: ApiToken) -> None:
    _sql(
        "UPDATE accounts_tokengroup SET allowed_models = '[\"other-model\"]' WHERE id = %s",
        [token.group_id],
    )


def _quota_of_one(token: ApiToken) -> None:
    _sql("UPDATE accounts_apitoken SET quota_micro = 1 WHERE id = %s", [token.pk])


def _minimum_above_balance(token: ApiToken) -> None:
    _sql("UPDATE wallet_wallet SET min_balance_micro = 1000000000 WHERE id = %s", [token.wallet_id])


def _one_request_per_minute(token: ApiToken) -> None:
    _sql("UPDATE accounts_apitoken SET rate_limit_rpm = 1 WHERE id = %s", [token.pk])


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        (_revoke, 401, "token_revoked"),
        (_deactivate_owner, 401, "token_revoked"),
        (_expire, 401, "token_expired"),
        (_read_only, 403, "insufficient_scope"),
        (_other_models_only, 403, "model_not_allowed"),
        (_group_other_models_only, 403, "model_not_allowed"),
        (_other_network_only, 403, "ip_not_allowed"),
        (_quota_of_one, 402, "token_quota_exceeded"),
        (_minimum_above_balance, 402, "minimum_balance_required"),
    ],
)
def test_a_change_behind_the_cache_refuses_the_very_next_authorization(
    http: httpx.Client,
    issued: tuple[ApiToken, str],
    funded_wallet: Wallet,
    change: Any,
    status: int,
    code: str,
) -> None:
    token, secret = issued
    assert _authorize(http, secret, "k1").status_code == 201  # now cached
    before = ledger_state(funded_wallet)
    rechecked = fastpath.rechecked
    change(token)
    refused = _authorize(http, secret, "k2")
    assert (refused.status_code, refused.json()["error"]["code"]) == (status, code)
    assert fastpath.rechecked == rechecked + 1
    assert list(Authorization.objects.values_list("request_id", flat=True)) == ["k1"]
    assert ledger_state(funded_wallet) == before


def test_a_rate_limit_set_behind_the_cache_applies_at_once(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    token, secret = issued
    assert _authorize(http, secret, "r1").status_code == 201
    _one_request_per_minute(token)
    assert _authorize(http, secret, "r2").status_code == 201  # the minute's one request
    refused = _authorize(http, secret, "r3")
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limit_exceeded")
    assert Authorization.objects.count() == 2


def test_a_request_answered_again_is_counted_once_by_the_request_limit(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet, settings: Any
) -> None:
    token, secret = issued
    settings.API_TOKEN_RATE_LIMIT = 2
    assert _authorize(http, secret, "n1").status_code == 201
    _sql("UPDATE accounts_apitoken SET name = 'renamed' WHERE id = %s", [token.pk])
    rechecked = fastpath.rechecked
    assert _authorize(http, secret, "n2").status_code == 201  # the minute's second request
    assert fastpath.rechecked == rechecked + 1
    assert _authorize(http, secret, "n3").status_code == 429
    assert Authorization.objects.count() == 2


def test_a_refusal_made_on_stale_state_is_answered_again_from_the_database(
    http: httpx.Client, customer: User, funded_wallet: Wallet, chat_price: Any
) -> None:
    token, secret = make_token(customer, scopes=("metering",), allowed_models=["other-model"])
    refused = _authorize(http, secret, "w1")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "model_not_allowed")
    _sql("UPDATE accounts_apitoken SET allowed_models = '[]' WHERE id = %s", [token.pk])
    rechecked = fastpath.rechecked
    assert _authorize(http, secret, "w2").status_code == 201
    assert fastpath.rechecked == rechecked + 1


def test_a_tier_rate_changed_behind_the_cache_prices_the_next_authorization(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet, settings: Any
) -> None:
    token, secret = issued
    assert _authorize(http, secret, "t1").status_code == 201
    _sql(
        "UPDATE accounts_billingtier SET rate = 2 WHERE id = "
        "(SELECT tier_id FROM accounts_tokengroup WHERE id = %s)",
        [token.group_id],
    )
    assert _authorize(http, secret, "t2").status_code == 201
    settings.METERING_FAST_PATH = False  # the full stack reads the token from the database
    full = http.post(
        AUTHORIZE,
        json={"model": "test-chat", "messages": [{"role": "user", "content": "Hello there"}],
              "max_tokens": 100, "request_id": "t3"},
        headers={"Authorization": f"Bearer {secret}"},
    )  # fmt: skip
    assert full.status_code == 201
    rates = dict(Authorization.objects.values_list("request_id", "tier_rate"))
    amounts = dict(Authorization.objects.values_list("request_id", "amount_micro"))
    assert (rates["t1"], rates["t2"]) == (1, 2)
    assert amounts["t2"] == amounts["t3"] > amounts["t1"]


def test_a_rotated_secret_stops_working_at_once(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    token, old = issued
    assert _authorize(http, old, "o1").status_code == 201
    _, new = account_services.api_token_rotate(token=ApiToken.objects.get(pk=token.pk))
    refused = _authorize(http, old, "o2")
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_token")
    assert _authorize(http, new, "o3").status_code == 201


def test_a_capture_with_a_token_revoked_behind_the_cache_is_refused_and_changes_nothing(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    token, secret = issued
    authorization = _authorize(http, secret, "v1").json()["id"]
    before = ledger_state(funded_wallet)
    _revoke(token)
    refused = _post(http, f"{AUTHORIZE}/{authorization}/capture", secret, USAGE)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "token_revoked")
    assert ledger_state(funded_wallet) == before
    assert not UsageRecord.objects.exists()
    assert Authorization.objects.get(pk=authorization).settled_at is None
    assert ApiToken.objects.get(pk=token.pk).used_micro == 0


def test_a_capture_after_a_harmless_change_is_charged_once(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    token, secret = issued
    authorization = _authorize(http, secret, "h1").json()["id"]
    _sql("UPDATE accounts_apitoken SET name = 'renamed' WHERE id = %s", [token.pk])
    rechecked = fastpath.rechecked
    captured = _post(http, f"{AUTHORIZE}/{authorization}/capture", secret, USAGE)
    assert captured.status_code == 200
    assert fastpath.rechecked == rechecked + 1  # the function refused, the retry charged
    assert UsageRecord.objects.count() == 1
    assert ApiToken.objects.get(pk=token.pk).used_micro == 600
    assert_ledger_ok(funded_wallet)


def test_a_token_with_caps_is_not_kept(
    http: httpx.Client, customer: User, funded_wallet: Wallet, chat_price: Any
) -> None:
    """Its authorizations lock cap rows first, which the checked functions do not do."""
    _, secret = make_token(customer, scopes=("metering",), quota_credits="5")
    hits, rechecked = _hits(), fastpath.rechecked
    for request_id in ("q1", "q2", "q3"):
        assert _authorize(http, secret, request_id).status_code == 201
    assert (_hits(), fastpath.rechecked) == (hits, rechecked)


def test_the_state_digest_ignores_counters_and_sees_everything_else(
    issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    token, _ = issued
    membership_owner = UserFactory()
    organization = account_services.organization_create(name="Digest", owner=membership_owner)
    account_services.membership_add(
        organization=organization, user=token.user, actor=membership_owner
    )
    pooled, _ = make_token(token.user, scopes=("metering",), organization=organization)

    def state(of: ApiToken) -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT accounts_token_state(%s)", [of.pk])
            return str(cursor.fetchone()[0])

    first, pooled_first = state(token), state(pooled)
    now = timezone.now()
    for statement, params in [
        ("UPDATE accounts_apitoken SET used_micro = 7, budget_spent_micro = 7, "
         "budget_period_start = %s, last_used_at = %s", [now.date(), now]),
        ("UPDATE accounts_membership SET spend_month_micro = 9, spend_month = %s", [now.date()]),
        ("UPDATE accounts_user SET last_login = %s", [now]),
        ("UPDATE wallet_wallet SET balance = balance + 0, held = held", []),
    ]:  # fmt: skip
        _sql(statement, params)
    assert (state(token), state(pooled)) == (first, pooled_first)
    for statement in [
        "UPDATE accounts_apitoken SET name = 'x' WHERE id = %s",
        "UPDATE accounts_user SET full_name = 'x' WHERE id = %s",
        "UPDATE wallet_wallet SET min_balance_micro = 5 WHERE id = %s",
    ]:
        owner_or_self = (
            token.user_id if "accounts_user" in statement
            else token.wallet_id if "wallet" in statement else token.pk
        )  # fmt: skip
        before = state(token)
        _sql(statement, [owner_or_self])
        assert state(token) != before, statement
    before = state(pooled)
    _sql("UPDATE accounts_membership SET monthly_spend_limit_micro = 5", [])
    assert state(pooled) != before


def _new_version(**changes: Any) -> Any:
    values: dict[str, Any] = {
        "model": "test-chat", "display_name": "Test Chat", "provider": "Test",
        "input_usd_per_mtok": "2.50", "output_usd_per_mtok": "10", "max_output_tokens": 4096,
    }  # fmt: skip
    return usage_services.model_price_create(**{**values, **changes})


def test_the_price_and_the_authorization_are_read_from_memory(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    _, secret = issued
    first = _authorize(http, secret, "m1").json()["id"]
    assert _post(http, f"{AUTHORIZE}/{first}/capture", secret, USAGE).status_code == 200
    prices, authorizations = _hits("prices"), _hits("authorizations")
    rechecked = fastpath.rechecked
    second = _authorize(http, secret, "m2").json()["id"]
    assert _post(http, f"{AUTHORIZE}/{second}/capture", secret, USAGE).status_code == 200
    assert (_hits("prices"), _hits("authorizations")) == (prices + 1, authorizations + 1)
    assert fastpath.rechecked == rechecked
    assert sorted(UsageRecord.objects.values_list("charged_micro", flat=True)) == [600, 600]
    # A capture replayed: the authorization was taken from memory once, then the database.
    replay = _post(http, f"{AUTHORIZE}/{second}/capture", secret, USAGE)
    assert replay.status_code == 200 and replay.headers.get("idempotent-replayed") == "true"
    assert UsageRecord.objects.count() == 2
    assert_ledger_ok(funded_wallet)


def test_a_new_price_version_applies_to_the_very_next_authorization(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    _, secret = issued
    assert _authorize(http, secret, "p1").status_code == 201  # the price is now kept
    dearer = _new_version(input_usd_per_mtok="5", output_usd_per_mtok="20")
    rechecked = fastpath.rechecked
    assert _authorize(http, secret, "p2").status_code == 201
    assert fastpath.rechecked == rechecked + 1
    opened = {a.request_id: a for a in Authorization.objects.all()}
    assert opened["p2"].price_id == dearer.pk != opened["p1"].price_id
    # Twice the price per token: twice the estimate, each rounded up to the µcr once.
    assert opened["p1"].amount_micro == 1008 and opened["p2"].amount_micro == 2015


def test_a_version_scheduled_ahead_takes_over_on_time(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    _, secret = issued
    assert _authorize(http, secret, "s1").status_code == 201
    later = _new_version(
        output_usd_per_mtok="20", effective_from=timezone.now() + dt.timedelta(seconds=1)
    )
    assert _authorize(http, secret, "s2").status_code == 201  # the kept version still holds
    time.sleep(1.1)
    assert _authorize(http, secret, "s3").status_code == 201
    prices = dict(Authorization.objects.values_list("request_id", "price_id"))
    assert prices["s1"] == prices["s2"] != prices["s3"] == later.pk


def test_a_model_withdrawn_behind_the_memory_is_refused_at_once(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    _, secret = issued
    assert _authorize(http, secret, "u1").status_code == 201
    before = ledger_state(funded_wallet)
    _new_version(active=False)
    refused = _authorize(http, secret, "u2")
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "unknown_model")
    assert ledger_state(funded_wallet) == before
    assert Authorization.objects.count() == 1


def test_a_capture_of_an_authorization_released_elsewhere_is_refused_as_without_memory(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet, settings: Any
) -> None:
    _, secret = issued
    kept = _authorize(http, secret, "x1").json()["id"]  # in the process's memory
    fresh = _authorize(http, secret, "x2").json()["id"]
    for authorization_id in (kept, fresh):
        usage_services.authorization_release(
            authorization=Authorization.objects.get(pk=authorization_id)
        )
    before = ledger_state(funded_wallet)
    fast = _post(http, f"{AUTHORIZE}/{kept}/capture", secret, USAGE)
    settings.METERING_FAST_PATH = False
    full = http.post(
        f"{AUTHORIZE}/{fresh}/capture", json=USAGE, headers={"Authorization": f"Bearer {secret}"}
    )
    assert fast.status_code == full.status_code >= 400
    assert fast.json()["error"]["code"] == full.json()["error"]["code"]
    assert ledger_state(funded_wallet) == before
    assert not UsageRecord.objects.exists()


def test_a_capture_after_its_hold_expired_elsewhere_is_charged_late_as_without_memory(
    http: httpx.Client, issued: tuple[ApiToken, str], funded_wallet: Wallet
) -> None:
    _, secret = issued
    authorization = _authorize(http, secret, "e1").json()["id"]
    hold_id = Authorization.objects.get(pk=authorization).hold_id
    _sql(
        "UPDATE wallet_hold SET expires_at = now() - interval '1 second' WHERE id = %s",
        [hold_id],
    )
    assert wallet_services.holds_expire() == 1
    rechecked = fastpath.rechecked
    captured = _post(http, f"{AUTHORIZE}/{authorization}/capture", secret, USAGE)
    assert captured.status_code == 200
    assert fastpath.rechecked == rechecked + 1  # the general path reads it from the database
    assert UsageRecord.objects.get().charged_micro == 600
    assert_ledger_ok(funded_wallet)
