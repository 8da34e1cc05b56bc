"""The metering API over HTTP: authorize, capture, release, one-shot records."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiToken, Membership, User
from tests.helpers import assert_ledger_ok, ledger_state, micro, refresh
from tests.usage.conftest import Api, counts, error_code, make_token
from usage import pricing
from usage.models import Authorization, ModelPrice, UsageRecord
from wallet import services as wallet_services
from wallet.models import Hold, LedgerEntry, Wallet

pytestmark = pytest.mark.django_db

AUTHORIZE = "/api/v1/authorizations"


def capture_url(authorization_id: int) -> str:
    return f"/api/v1/authorizations/{authorization_id}/capture"


def release_url(authorization_id: int) -> str:
    return f"/api/v1/authorizations/{authorization_id}/release"


def authorize(api: Api, **body: Any) -> Any:
    body.setdefault("model", "test-chat")
    return api.post(AUTHORIZE, body)


def snapshot(*wallets: Wallet) -> Any:
    return [ledger_state(w) for w in wallets], counts()


# --- Authorize ------------------------------------------------------------------------


def test_authorize_holds_the_estimate(api: Api, funded: Wallet) -> None:
    # 400 characters -> 100 input tokens x $2.5/M + 1000 output tokens x $10/M = $0.01025
    response = authorize(api, prompt="x" * 400, max_tokens=1000, request_id="req-1")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "active"
    assert body["amount"] == "0.010250"
    assert (body["estimated_input_tokens"], body["max_tokens"]) == (100, 1000)
    hold = Hold.objects.get(pk=Authorization.objects.get(pk=body["id"]).hold_id)
    assert (hold.amount, hold.status) == (10_250, "active")
    fresh = refresh(funded)
    assert fresh.held == 10_250
    assert response["X-Credits-Remaining"] == "99.989750"


def test_messages_are_estimated_at_four_characters_a_token(api: Api) -> None:
    messages = [
        {"role": "system", "content": "a" * 10},
        {"role": "user", "content": [{"type": "text", "text": "b" * 30}, {"type": "image"}]},
    ]
    body = authorize(api, messages=messages, max_tokens=1).json()
    assert body["estimated_input_tokens"] == 10  # 40 characters


def test_max_tokens_defaults_and_is_capped_by_the_model(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    settings.METERING_DEFAULT_MAX_TOKENS = 2048
    assert authorize(api, input_tokens=0).json()["max_tokens"] == 2048
    assert authorize(api, input_tokens=0, max_tokens=100_000).json()["max_tokens"] == 4096


def test_authorize_replay_returns_the_same_authorization(api: Api, funded: Wallet) -> None:
    first = authorize(api, prompt="hi", max_tokens=10, request_id="r-1")
    before = snapshot(funded)
    again = authorize(api, prompt="hi", max_tokens=10, request_id="r-1")
    assert again.status_code == 200 and again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert snapshot(funded) == before


def test_idempotency_key_header_names_the_request(api: Api) -> None:
    first = api.post(AUTHORIZE, {"model": "test-chat"}, HTTP_IDEMPOTENCY_KEY="k-1")
    again = api.post(AUTHORIZE, {"model": "test-chat"}, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.json()["request_id"] == "k-1" and again.json()["id"] == first.json()["id"]


def test_authorize_reused_request_id_with_another_body_is_a_conflict(
    api: Api, funded: Wallet
) -> None:
    authorize(api, prompt="hi", max_tokens=10, request_id="r-1")
    before = snapshot(funded)
    response = authorize(api, prompt="hi", max_tokens=11, request_id="r-1")
    assert response.status_code == 409 and error_code(response) == "idempotency_conflict"
    assert snapshot(funded) == before


# --- Capture --------------------------------------------------------------------------


def test_capture_charges_the_actual_cost_and_records_every_factor(
    api: Api, funded: Wallet, token_and_secret: tuple[ApiToken, str]
) -> None:
    authorization = authorize(api, max_tokens=2000, request_id="job-7").json()
    usage = {
        "input_tokens": 1000,
        "cached_input_tokens": 400,
        "output_tokens": 500,
        "latency_ms": 850,
        "status": "succeeded",
        "metadata": {"retries": 2, "tools": ["search"], "iterations": 3, "region": "eu-west"},
    }
    response = api.post(capture_url(authorization["id"]), usage)
    assert response.status_code == 200, response.json()
    body = response.json()
    # 600 x 2.5 + 400 x 1.25 + 500 x 10 per million = $0.007
    assert (body["cost"], body["charged"]) == ("0.007000", "0.007000")
    assert body["shortfall"] == "0.000000"
    assert body["pricing"]["usd_cost"] == "0.00700000000000"
    assert body["request_id"] == "job-7" and body["authorization_id"] == authorization["id"]
    assert body["metadata"]["tools"] == ["search"]
    record = UsageRecord.objects.get(pk=body["id"])
    # The record alone recomputes the charge.
    usd = (
        (
            (record.input_tokens - record.cached_input_tokens) * record.input_usd_per_mtok
            + record.cached_input_tokens * record.cached_input_usd_per_mtok
            + record.output_tokens * record.output_usd_per_mtok
            + record.reasoning_tokens * record.reasoning_usd_per_mtok
        )
        / Decimal(10**6)
        + record.request_usd
        + record.task_units * record.unit_usd
    )
    assert usd == record.usd_cost
    assert pricing.breakdown_from_record(record).credits_micro == record.cost_micro
    assert record.cost_micro == 7_000 and record.latency_ms == 850
    wallet = refresh(funded)
    assert (wallet.balance, wallet.held) == (micro("100") - 7_000, 0)
    entry = LedgerEntry.objects.get(wallet=funded, kind="usage")
    assert (entry.amount, entry.reference_type, entry.reference_id) == (
        -7_000,
        "usage.usagerecord",
        str(record.pk),
    )
    token = ApiToken.objects.get(pk=token_and_secret[0].pk)
    assert token.used_micro == 7_000
    hold_id = Authorization.objects.get(pk=authorization["id"]).hold_id
    assert Hold.objects.get(pk=hold_id).status == "captured"
    assert response["X-Credits-Remaining"] == "99.993000"
    assert_ledger_ok(funded)


def test_capture_twice_charges_once(api: Api, funded: Wallet) -> None:
    authorization = authorize(api, max_tokens=100).json()
    usage = {"input_tokens": 10, "output_tokens": 20}
    first = api.post(capture_url(authorization["id"]), usage)
    before = snapshot(funded)
    again = api.post(capture_url(authorization["id"]), usage)
    assert again.status_code == 200 and again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert snapshot(funded) == before


def test_capture_again_with_other_usage_is_a_conflict(api: Api, funded: Wallet) -> None:
    authorization = authorize(api, max_tokens=100).json()
    api.post(capture_url(authorization["id"]), {"input_tokens": 10})
    before = snapshot(funded)
    response = api.post(capture_url(authorization["id"]), {"input_tokens": 11})
    assert response.status_code == 409 and error_code(response) == "idempotency_conflict"
    assert snapshot(funded) == before


def test_capture_beyond_hold_and_balance_records_a_shortfall(user: User, prices) -> None:  # type: ignore[no-untyped-def]
    wallet = Wallet.objects.get(user=user)
    from tests.helpers import credit

    credit(wallet, "0.01")
    token, secret = make_token(user)
    api = Api(secret)
    authorization = authorize(api, input_tokens=0, max_tokens=100).json()  # $0.001
    # 1000 output tokens x $10/M = $0.01 = 10,000 µcr; only 10,000 exist in all.
    body = api.post(capture_url(authorization["id"]), {"output_tokens": 2000}).json()
    assert (body["cost"], body["charged"]) == ("0.020000", "0.010000")
    assert body["shortfall"] == "0.010000"
    assert refresh(wallet).balance == 0 and refresh(wallet).held == 0
    assert ApiToken.objects.get(pk=token.pk).used_micro == 10_000
    assert_ledger_ok(wallet)


def test_capture_after_the_hold_expired_still_charges(api: Api, funded: Wallet) -> None:
    authorization = authorize(api, max_tokens=100, ttl_seconds=10).json()
    wallet_services.holds_expire(now=timezone.now() + timezone.timedelta(seconds=11))
    assert refresh(funded).held == 0
    body = api.post(capture_url(authorization["id"]), {"output_tokens": 100}).json()
    assert (body["charged"], body["shortfall"]) == ("0.001000", "0.000000")
    assert refresh(funded).balance == micro("100") - 1_000
    assert_ledger_ok(funded)


def test_release_gives_the_hold_back(api: Api, funded: Wallet) -> None:
    authorization = authorize(api, max_tokens=100).json()
    response = api.post(release_url(authorization["id"]))
    assert response.status_code == 200 and response.json()["status"] == "released"
    assert refresh(funded).held == 0
    assert api.post(release_url(authorization["id"])).json()["status"] == "released"
    before = snapshot(funded)
    response = api.post(capture_url(authorization["id"]), {"input_tokens": 1})
    assert response.status_code == 409 and error_code(response) == "hold_released"
    assert snapshot(funded) == before
    detail = api.get(f"/api/v1/authorizations/{authorization['id']}").json()
    assert detail["status"] == "released"


def test_release_after_capture_is_refused(api: Api, funded: Wallet) -> None:
    authorization = authorize(api, max_tokens=100).json()
    api.post(capture_url(authorization["id"]), {"input_tokens": 1})
    before = snapshot(funded)
    response = api.post(release_url(authorization["id"]))
    assert response.status_code == 409 and error_code(response) == "hold_already_captured"
    assert snapshot(funded) == before
    assert api.get(f"/api/v1/authorizations/{authorization['id']}").json()["status"] == "captured"


def test_someone_elses_authorization_is_not_found(
    api: Api, funded: Wallet, other_user: User, prices
) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import credit

    other_wallet = Wallet.objects.get(user=other_user)
    credit(other_wallet, "5")
    _, other_secret = make_token(other_user)
    theirs = authorize(Api(other_secret), max_tokens=100).json()
    # and the same user's other token cannot settle it either
    _, second_secret = make_token(funded.user)
    before = snapshot(funded, other_wallet)
    for client in (api, Api(second_secret)):
        for url in (capture_url(theirs["id"]), release_url(theirs["id"])):
            response = client.post(url, {"input_tokens": 1})
            assert response.status_code == 404
            assert error_code(response) == "authorization_not_found"
        assert client.get(f"/api/v1/authorizations/{theirs['id']}").status_code == 404
    assert snapshot(funded, other_wallet) == before


# --- One-shot records -----------------------------------------------------------------


def test_one_shot_record_charges_once_per_idempotency_key(api: Api, funded: Wallet) -> None:
    body = {"model": "test-search", "input_tokens": 900, "output_tokens": 450, "endpoint": "search"}
    first = api.post("/api/v1/usage", body, HTTP_IDEMPOTENCY_KEY="call-1")
    assert first.status_code == 201, first.json()
    assert first.json()["charged"] == "0.014450"  # includes the $0.005 request fee
    before = snapshot(funded)
    again = api.post("/api/v1/usage", body, HTTP_IDEMPOTENCY_KEY="call-1")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert snapshot(funded) == before
    changed = {**body, "output_tokens": 451}
    conflict = api.post("/api/v1/usage", changed, HTTP_IDEMPOTENCY_KEY="call-1")
    assert conflict.status_code == 409 and error_code(conflict) == "idempotency_conflict"
    assert snapshot(funded) == before
    assert_ledger_ok(funded)


def test_one_shot_prices_task_units(api: Api, funded: Wallet) -> None:
    body = {"model": "test-image", "input_tokens": 60, "task_units": "3"}
    response = api.post("/api/v1/usage", body, HTTP_IDEMPOTENCY_KEY="img-1")
    assert response.json()["charged"] == "0.120300"
    assert response.json()["usage"]["unit_name"] == "image"


def test_one_shot_without_idempotency_key_is_refused(api: Api, funded: Wallet) -> None:
    before = snapshot(funded)
    response = api.post("/api/v1/usage", {"model": "test-chat", "input_tokens": 5})
    assert response.status_code == 400 and error_code(response) == "idempotency_key_required"
    assert snapshot(funded) == before


# --- Bad input ------------------------------------------------------------------------

BAD_AUTHORIZATIONS = [
    ({"model": "no-such-model"}, 400, "unknown_model"),
    ({"model": ""}, 400, "invalid_input"),
    ({}, 400, "invalid_input"),
    ({"model": "test-chat", "max_tokens": -1}, 400, "invalid_input"),
    ({"model": "test-chat", "max_tokens": 0}, 400, "invalid_input"),
    ({"model": "test-chat", "input_tokens": -5}, 400, "invalid_input"),
    ({"model": "test-chat", "input_tokens": 10**12}, 400, "invalid_input"),
    ({"model": "test-chat", "max_tokens": 10**12}, 400, "invalid_input"),
    ({"model": "test-chat", "max_tokens": "many"}, 400, "invalid_input"),
    ({"model": "test-chat", "task_units": "-1"}, 400, "invalid_input"),
    ({"model": "test-chat", "task_units": "NaN"}, 400, "invalid_input"),
    ({"model": "test-chat", "messages": "hello"}, 400, "invalid_input"),
    ({"model": "test-chat", "prompt": "x" * 3_000_000}, 413, "request_too_large"),
    ({"model": "test-chat", "ttl_seconds": 1}, 400, "invalid_input"),
    ({"model": "test-chat", "request_id": "x" * 151}, 400, "invalid_input"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_AUTHORIZATIONS)
def test_bad_authorizations_are_refused_and_change_nothing(
    api: Api, funded: Wallet, body: dict[str, Any], status: int, code: str
) -> None:
    before = snapshot(funded)
    response = api.post(AUTHORIZE, body)
    assert (response.status_code, error_code(response)) == (status, code), response.json()
    assert snapshot(funded) == before


BAD_USAGE = [
    ({"input_tokens": -1}, "invalid_input"),
    ({"output_tokens": 10**12}, "invalid_input"),
    ({"reasoning_tokens": 1.5}, "invalid_input"),
    ({"input_tokens": 5, "cached_input_tokens": 6}, "invalid_input"),
    ({"task_units": "1e400"}, "invalid_input"),
    ({"status": "exploded"}, "invalid_input"),
    ({"latency_ms": -3}, "invalid_input"),
    ({"metadata": {"retries": -1}}, "invalid_input"),
    ({"metadata": {"extra": {"blob": "x" * 5000}}}, "invalid_input"),
    # Found by schemathesis: PostgreSQL's jsonb cannot hold U+0000 (500).
    ({"metadata": {"extra": {"note": "a\x00b"}}}, "invalid_input"),
    ({"metadata": {"extra": {"deep": [{"a\x00": 1}]}}}, "invalid_input"),
    ({"started_at": "2030-01-02T00:00Z", "finished_at": "2030-01-01T00:00Z"}, "invalid_input"),
    # Found by schemathesis: a span of centuries overflowed the latency column (500).
    (
        {"started_at": "0190-06-04T21:10:17-03:30", "finished_at": "3039-09-06T19:01Z"},
        "invalid_usage",
    ),
    ({"started_at": "2020-01-01T00:00Z", "finished_at": "2020-01-09T00:00Z"}, "invalid_usage"),
    ({"finished_at": "2999-01-01T00:00Z"}, "invalid_usage"),
]


@pytest.mark.parametrize(("usage", "code"), BAD_USAGE)
def test_bad_usage_is_refused_and_changes_nothing(
    api: Api, funded: Wallet, usage: dict[str, Any], code: str
) -> None:
    authorization = authorize(api, max_tokens=100).json()
    one_shot = {"model": "test-chat", **usage}
    before = snapshot(funded)
    response = api.post(capture_url(authorization["id"]), usage)
    assert (response.status_code, error_code(response)) == (400, code), response.json()
    response = api.post("/api/v1/usage", one_shot, HTTP_IDEMPOTENCY_KEY="k")
    assert (response.status_code, error_code(response)) == (400, code), response.json()
    assert snapshot(funded) == before
    assert Authorization.objects.get(pk=authorization["id"]).settled_at is None


@pytest.mark.parametrize("raw", ["{not json", '{"model": "test-chat",}', "[1, 2", "\x00"])
def test_malformed_json_is_refused_and_changes_nothing(api: Api, funded: Wallet, raw: str) -> None:
    authorization = authorize(api, max_tokens=100).json()
    before = snapshot(funded)
    for url in (AUTHORIZE, capture_url(authorization["id"]), "/api/v1/usage"):
        response = api.post(url, raw=raw, HTTP_IDEMPOTENCY_KEY="k")
        assert response.status_code == 400 and error_code(response) == "malformed_request"
    assert snapshot(funded) == before


def test_a_prompt_over_the_token_limit_is_refused(api: Api, funded: Wallet, settings) -> None:  # type: ignore[no-untyped-def]
    settings.METERING_MAX_TOKENS = 1000
    before = snapshot(funded)
    response = authorize(api, prompt="x" * 4004)
    assert response.status_code == 400 and error_code(response) == "invalid_usage"
    assert response.json()["error"]["detail"]["field"] == "input_tokens"
    assert snapshot(funded) == before


def test_a_json_list_instead_of_an_object_is_refused(api: Api, funded: Wallet) -> None:
    before = snapshot(funded)
    response = api.post(AUTHORIZE, ["test-chat"])
    assert response.status_code == 400 and error_code(response) == "invalid_input"
    assert snapshot(funded) == before


# --- Authentication and permissions ---------------------------------------------------


def test_missing_or_bad_credentials_are_401(funded: Wallet, prices, client) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(funded)
    response = client.post(AUTHORIZE, {"model": "test-chat"}, content_type="application/json")
    assert response.status_code == 401 and error_code(response) == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")
    _token, secret = make_token(funded.user)
    for header in (
        "Bearer sk-live-garbage",
        f"Bearer {secret[:-2]}zz",
        f"Bearer {secret} extra",
        "Bearer",
    ):
        response = client.post(
            AUTHORIZE, {"model": "test-chat"}, content_type="application/json",
            HTTP_AUTHORIZATION=header,
        )  # fmt: skip
        assert response.status_code == 401 and error_code(response) == "invalid_token", header
    assert snapshot(funded) == before


def test_revoked_expired_and_rotated_tokens_are_401(funded: Wallet, prices) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(funded)
    revoked, revoked_secret = make_token(funded.user)
    account_services.api_token_revoke(token=revoked)
    expired, expired_secret = make_token(funded.user)
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now())
    rotated, old_secret = make_token(funded.user)
    _, new_secret = account_services.api_token_rotate(token=rotated)
    for secret, code in (
        (revoked_secret, "token_revoked"),
        (expired_secret, "token_expired"),
        (old_secret, "invalid_token"),
    ):
        for response in (authorize(Api(secret)), Api(secret).get("/api/v1/wallet")):
            assert response.status_code == 401 and error_code(response) == code
            assert "X-Credits-Remaining" not in response
    assert snapshot(funded) == before
    assert authorize(Api(new_secret)).status_code == 201


@pytest.mark.parametrize(
    ("scopes", "method", "path"),
    [
        (("read",), "post", AUTHORIZE),
        (("read",), "post", "/api/v1/usage"),
        (("inference",), "post", AUTHORIZE),
        (("metering",), "get", "/api/v1/usage"),
        (("metering",), "get", "/api/v1/wallet"),
        (("metering",), "get", "/api/v1/ledger"),
        (("metering",), "get", "/api/v1/usage/export"),
        (("inference",), "get", "/api/v1/wallet"),
    ],
)
def test_wrong_scope_is_403(funded: Wallet, prices, scopes, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    _, secret = make_token(funded.user, scopes=scopes)
    before = snapshot(funded)
    api = Api(secret)
    if method == "post":
        response = api.post(path, {"model": "test-chat"}, HTTP_IDEMPOTENCY_KEY="k")
    else:
        response = api.get(path)
    assert response.status_code == 403 and error_code(response) == "insufficient_scope"
    assert snapshot(funded) == before


def test_metering_and_capture_need_the_metering_scope(funded: Wallet, prices) -> None:  # type: ignore[no-untyped-def]
    _token, secret = make_token(funded.user)
    authorization = authorize(Api(secret)).json()
    _, read_only = make_token(funded.user, scopes=("read",))
    # read-only token of the same owner: refused by scope before the lookup
    for url in (capture_url(authorization["id"]), release_url(authorization["id"])):
        response = Api(read_only).post(url, {})
        assert response.status_code == 403 and error_code(response) == "insufficient_scope"


def test_model_not_allowed_by_token_or_group_is_403(funded: Wallet, prices) -> None:  # type: ignore[no-untyped-def]
    _, by_token = make_token(funded.user, allowed_models=["test-r*"])
    tier = account_services.billing_tier_create(name="t", rate="1")
    group = account_services.token_group_create(
        name="images", tier=tier, allowed_models=["test-image"]
    )
    _, by_group = make_token(funded.user, group=group)
    before = snapshot(funded)
    for secret in (by_token, by_group):
        response = authorize(Api(secret))
        assert response.status_code == 403 and error_code(response) == "model_not_allowed"
        assert response.json()["error"]["detail"]["limit_source"] == "model_not_allowed"
        response = Api(secret).post(
            "/api/v1/usage", {"model": "test-chat"}, HTTP_IDEMPOTENCY_KEY="k"
        )
        assert response.status_code == 403 and error_code(response) == "model_not_allowed"
    assert snapshot(funded) == before
    assert authorize(Api(by_token), model="test-reasoner").status_code == 201
    assert authorize(Api(by_group), model="test-image").status_code == 201


def test_address_not_allowed_is_403(funded: Wallet, prices) -> None:  # type: ignore[no-untyped-def]
    _, secret = make_token(funded.user, allowed_ips=["10.0.0.0/8", "192.168.1.5"])
    before = snapshot(funded)
    response = Api(secret).post(AUTHORIZE, {"model": "test-chat"}, REMOTE_ADDR="172.16.0.1")
    assert response.status_code == 403 and error_code(response) == "ip_not_allowed"
    assert snapshot(funded) == before
    for address in ("10.20.30.40", "192.168.1.5"):
        ok = Api(secret).post(AUTHORIZE, {"model": "test-chat"}, REMOTE_ADDR=address)
        assert ok.status_code == 201


def test_a_session_cannot_meter(funded: Wallet, prices, client) -> None:  # type: ignore[no-untyped-def]
    client.force_login(funded.user)
    response = client.post(AUTHORIZE, {"model": "test-chat"}, content_type="application/json")
    assert response.status_code == 403 and error_code(response) == "token_required"
    # but it can read its own wallet, without the token header
    response = client.get("/api/v1/wallet")
    assert response.status_code == 200 and "X-Credits-Remaining" not in response


def test_tokens_are_throttled(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    settings.API_TOKEN_RATE_LIMIT = 3
    statuses = [api.get("/api/v1/wallet").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = api.get("/api/v1/wallet")
    assert error_code(response) == "rate_limited" and int(response["Retry-After"]) >= 1


# --- Caps -----------------------------------------------------------------------------


def test_wallet_cap_refuses_with_limit_source_wallet(user: User, prices) -> None:  # type: ignore[no-untyped-def]
    wallet = Wallet.objects.get(user=user)
    from tests.helpers import credit

    credit(wallet, "0.001")
    _, secret = make_token(user)
    before = snapshot(wallet)
    response = authorize(Api(secret), max_tokens=1000)  # $0.01
    assert response.status_code == 402 and error_code(response) == "insufficient_credits"
    assert response.json()["error"]["detail"]["limit_source"] == "wallet"
    assert response["X-Credits-Remaining"] == "0.001000"
    assert snapshot(wallet) == before


def test_token_quota_counts_used_and_in_flight(funded: Wallet, prices) -> None:  # type: ignore[no-untyped-def]
    token, secret = make_token(funded.user, quota_credits="0.025")
    api = Api(secret)
    first = authorize(api, input_tokens=0, max_tokens=1000).json()  # holds 0.01
    authorize(api, input_tokens=0, max_tokens=1000)  # holds 0.01 -> 0.02 in flight
    before = snapshot(funded)
    response = authorize(api, input_tokens=0, max_tokens=1000)
    assert response.status_code == 402 and error_code(response) == "token_quota_exceeded"
    detail = response.json()["error"]["detail"]
    assert detail["limit_source"] == "token_quota"
    assert (detail["in_flight"], detail["available"]) == (20_000, 5_000)
    assert detail["requested"] == 10_000
    assert snapshot(funded) == before
    # capturing 0.003 of the first frees 0.007 of quota: 0.025 - 0.003 - 0.01 = 0.012 left
    api.post(capture_url(first["id"]), {"output_tokens": 300})
    assert ApiToken.objects.get(pk=token.pk).used_micro == 3_000
    assert authorize(api, input_tokens=0, max_tokens=1000).status_code == 201
    assert authorize(api, input_tokens=0, max_tokens=1000).status_code == 402


def test_released_and_expired_holds_free_the_quota(funded: Wallet, prices) -> None:  # type: ignore[no-untyped-def]
    _, secret = make_token(funded.user, quota_credits="0.01")
    api = Api(secret)
    first = authorize(api, input_tokens=0, max_tokens=1000).json()
    assert authorize(api, input_tokens=0, max_tokens=1000).status_code == 402
    api.post(release_url(first["id"]))
    authorize(api, input_tokens=0, max_tokens=1000, ttl_seconds=10)
    assert authorize(api, input_tokens=0, max_tokens=1000).status_code == 402
    wallet_services.holds_expire(now=timezone.now() + timezone.timedelta(seconds=11))
    assert authorize(api, input_tokens=0, max_tokens=1000).status_code == 201


def test_one_shot_respects_the_token_quota(funded: Wallet, prices) -> None:  # type: ignore[no-untyped-def]
    _, secret = make_token(funded.user, quota_credits="0.005")
    before = snapshot(funded)
    response = Api(secret).post(
        "/api/v1/usage", {"model": "test-chat", "output_tokens": 1000}, HTTP_IDEMPOTENCY_KEY="k"
    )
    assert response.status_code == 402 and error_code(response) == "token_quota_exceeded"
    assert snapshot(funded) == before


def test_member_monthly_limit_refuses_with_member_limit(org_member, prices) -> None:  # type: ignore[no-untyped-def]
    member, organization = org_member
    membership = Membership.objects.get(user=member, organization=organization)
    owner = organization.memberships.get(role="owner").user
    account_services.membership_update(
        membership=membership, actor=owner, monthly_spend_limit_credits="0.015"
    )
    pool = Wallet.objects.get(organization=organization)
    _token, secret = make_token(member, organization=organization)
    api = Api(secret)
    first = authorize(api, input_tokens=0, max_tokens=1000).json()  # 0.01
    api.post(capture_url(first["id"]), {"output_tokens": 1000})  # spent 0.01 this month
    membership.refresh_from_db()
    assert membership.spend_month_micro == 10_000
    before = snapshot(pool)
    response = authorize(api, input_tokens=0, max_tokens=1000)
    assert response.status_code == 402 and error_code(response) == "member_limit_exceeded"
    detail = response.json()["error"]["detail"]
    assert (detail["limit_source"], detail["spent_this_month"], detail["available"]) == (
        "member_limit",
        10_000,
        5_000,
    )
    assert snapshot(pool) == before
    assert authorize(api, input_tokens=0, max_tokens=400).status_code == 201
    # The owner's own token has no limit.
    _, owner_secret = make_token(owner, organization=organization)
    assert authorize(Api(owner_secret), input_tokens=0, max_tokens=1000).status_code == 201


def test_member_spend_starts_again_each_month(org_member, prices) -> None:  # type: ignore[no-untyped-def]
    member, organization = org_member
    membership = Membership.objects.get(user=member, organization=organization)
    Membership.objects.filter(pk=membership.pk).update(
        monthly_spend_limit_micro=10_000, spend_month="2000-01-01", spend_month_micro=10_000
    )
    _, secret = make_token(member, organization=organization)
    api = Api(secret)
    # Last spent in January 2000: this month starts from zero; 0.01 fits the 0.01 limit.
    authorization = authorize(api, input_tokens=0, max_tokens=1000)
    assert authorization.status_code == 201, authorization.json()
    api.post(capture_url(authorization.json()["id"]), {"output_tokens": 1000})
    membership.refresh_from_db()
    assert membership.spend_month == timezone.now().date().replace(day=1)
    assert membership.spend_month_micro == 10_000


def test_x_credits_remaining_is_on_every_token_response(api: Api, funded: Wallet) -> None:
    for response in (
        api.get("/api/v1/wallet"),
        api.get("/api/v1/usage"),
        api.get("/api/v1/ledger"),
        api.get("/api/v1/usage/999999"),
        api.post(AUTHORIZE, {"model": "nope"}),
    ):
        assert response["X-Credits-Remaining"] == "100.000000", response.status_code


def test_x_credits_remaining_after_metering_is_what_the_wallet_holds(
    api: Api, funded: Wallet
) -> None:
    """Authorize, capture and one-shot report the balance their wallet operation left (no
    second read); it must equal a fresh read of the wallet, and a replay's must too."""
    from wallet.selectors import wallet_available

    def remaining() -> str:
        return f"{Decimal(wallet_available(wallet_id=funded.pk)) / 1_000_000:.6f}"

    authorization = authorize(api, max_tokens=1000, request_id="r1")
    assert authorization["X-Credits-Remaining"] == remaining() != "100.000000"
    captured = api.post(
        capture_url(authorization.json()["id"]), {"input_tokens": 7, "output_tokens": 9}
    )
    assert captured["X-Credits-Remaining"] == remaining()
    again = api.post(
        capture_url(authorization.json()["id"]), {"input_tokens": 7, "output_tokens": 9}
    )
    assert again["X-Credits-Remaining"] == remaining()
    one_shot = api.post(
        "/api/v1/usage", {"model": "test-chat", "input_tokens": 50}, HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert one_shot.status_code == 201
    assert one_shot["X-Credits-Remaining"] == remaining()


def test_organization_tokens_spend_from_the_pool(org_member, prices) -> None:  # type: ignore[no-untyped-def]
    member, organization = org_member
    pool = Wallet.objects.get(organization=organization)
    personal = Wallet.objects.get(user=member)
    _, secret = make_token(member, organization=organization)
    api = Api(secret)
    authorization = authorize(api, max_tokens=100).json()
    api.post(capture_url(authorization["id"]), {"output_tokens": 100})
    assert refresh(pool).balance == micro("100") - 1_000
    assert refresh(personal).balance == 0
    assert_ledger_ok(pool, personal)


def test_tier_rate_applies(funded: Wallet, prices) -> None:  # type: ignore[no-untyped-def]
    tier = account_services.billing_tier_create(name="partner", rate="0.3")
    group = account_services.token_group_create(name="partners", tier=tier)
    _, secret = make_token(funded.user, group=group)
    api = Api(secret)
    authorization = authorize(api, max_tokens=1000, input_tokens=0).json()
    assert authorization["amount"] == "0.003000" and authorization["tier_rate"] == "0.3000"
    body = api.post(capture_url(authorization["id"]), {"output_tokens": 500}).json()
    assert body["charged"] == "0.001500" and body["pricing"]["tier_rate"] == "0.3000"
    assert body["token_group"] == "partners"


def test_a_price_change_applies_to_new_authorizations_only(api: Api, funded: Wallet, prices):  # type: ignore[no-untyped-def]
    old = authorize(api, input_tokens=0, max_tokens=100).json()
    from usage import services

    newer = services.model_price_create(
        model="test-chat", display_name="Test Chat", provider="Test", output_usd_per_mtok="20"
    )
    new = authorize(api, input_tokens=0, max_tokens=100).json()
    assert (old["price_id"], new["price_id"]) == (prices["chat"].pk, newer.pk)
    old_record = api.post(capture_url(old["id"]), {"output_tokens": 100}).json()
    new_record = api.post(capture_url(new["id"]), {"output_tokens": 100}).json()
    assert (old_record["charged"], new_record["charged"]) == ("0.001000", "0.002000")
    assert ModelPrice.objects.get(pk=prices["chat"].pk).output_usd_per_mtok == 10


def test_an_inactive_model_is_unknown(api: Api, funded: Wallet) -> None:
    from usage import services

    services.model_price_create(model="test-chat", display_name="x", provider="x", active=False)
    response = authorize(api)
    assert response.status_code == 400 and error_code(response) == "unknown_model"


def test_free_requests_still_hold_one_micro_credit(api: Api, funded: Wallet) -> None:
    from usage import services

    services.model_price_create(model="free", display_name="Free", provider="x")
    authorization = authorize(api, model="free").json()
    assert authorization["amount"] == "0.000001"
    record = api.post(capture_url(authorization["id"]), {"input_tokens": 10}).json()
    assert record["charged"] == "0.000000"
    assert refresh(funded).held == 0 and refresh(funded).balance == micro("100")
    assert_ledger_ok(funded)


def test_stale_authorizations_are_closed_by_the_job(api: Api, funded: Wallet, settings) -> None:  # type: ignore[no-untyped-def]
    from usage.tasks import authorizations_close_stale

    stale = authorize(api, max_tokens=10, ttl_seconds=10).json()
    live = authorize(api, max_tokens=10).json()
    wallet_services.holds_expire(now=timezone.now() + timezone.timedelta(seconds=11))
    assert authorizations_close_stale.delay().get() == 0  # still in the late-capture window
    past = timezone.now() - timezone.timedelta(seconds=settings.METERING_LATE_CAPTURE_SECONDS + 1)
    Authorization.objects.filter(pk=stale["id"]).update(expires_at=past)
    assert authorizations_close_stale.delay().get() == 1
    assert Authorization.objects.get(pk=stale["id"]).settled_at is not None
    assert Authorization.objects.get(pk=live["id"]).settled_at is None
    assert authorizations_close_stale.delay().get() == 0
    # past the window, a capture is refused and charges nothing
    before = snapshot(funded)
    body = api.post(capture_url(stale["id"]), {"output_tokens": 10})
    assert snapshot(funded) == before
    assert body.status_code == 409 and error_code(body) == "hold_expired"
