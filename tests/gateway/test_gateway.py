"""The gateway, driven by the official ``openai`` client against a live server, in front of
a fake upstream: after each call the balance and the usage record are exact."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from accounts.models import ApiToken, User
from tests.gateway.conftest import Gateway, run_parallel, token_of
from tests.gateway.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, REPLY, FakeUpstream
from tests.helpers import assert_ledger_ok, credit, ledger_state
from tests.usage.conftest import make_token
from usage.models import Authorization, ModelPrice, UpstreamChannel, UsageRecord
from wallet.models import Hold, Wallet

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Say hello."}]  # 10 characters: 3 tokens estimated
REPORTED_COST = PROMPT_TOKENS * 25 // 10 + COMPLETION_TOKENS * 10  # µcr, see chat_price


def _balance(wallet: Wallet) -> tuple[int, int]:
    fresh = Wallet.objects.get(pk=wallet.pk)
    return fresh.balance, fresh.held


def _only_record() -> UsageRecord:
    (record,) = UsageRecord.objects.all()
    return record


def _wait_for_record(timeout: float = 10.0) -> UsageRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = UsageRecord.objects.first()
        if record is not None:
            return record
        time.sleep(0.05)
    raise AssertionError("no usage record was written")


def _estimated_cost(record: UsageRecord) -> int:
    return math.ceil(record.input_tokens * 2.5) + record.output_tokens * 10


def _remaining(wallet: Wallet) -> str:
    balance, held = _balance(wallet)
    return f"{(balance - held) / 1_000_000:.6f}"


# --- Calls that succeed -----------------------------------------------------------------


def test_completion_charges_the_upstreams_usage(
    ai: openai.OpenAI, upstream: FakeUpstream, funded_wallet: Wallet
) -> None:
    raw = ai.chat.completions.with_raw_response.create(model="test-chat", messages=MESSAGES)
    completion = raw.parse()

    assert completion.choices[0].message.content == REPLY
    assert completion.usage is not None and completion.usage.prompt_tokens == PROMPT_TOKENS
    record = _wait_for_record()
    assert (record.status, record.estimated, record.endpoint) == (
        "succeeded",
        False,
        "chat.completions",
    )
    assert (record.input_tokens, record.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.charged_micro == record.cost_micro == REPORTED_COST == 120
    assert _balance(funded_wallet) == (10_000_000 - 120, 0)
    assert raw.headers["X-Credits-Remaining"] == "9.999880"
    assert upstream.requests[0]["headers"]["authorization"] == "Bearer sk-upstream-default"
    assert "stream_options" not in upstream.requests[0]["body"]
    assert_ledger_ok(funded_wallet)


def test_stream_with_usage_is_relayed_and_charged_from_the_usage(
    ai: openai.OpenAI, upstream: FakeUpstream, funded_wallet: Wallet
) -> None:
    stream = ai.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True)
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)

    assert text == REPLY
    # We ask the upstream for the usage chunk; this client did not, so it is not sent on
    # (every chunk it gets has a choice, as it expects).
    assert upstream.requests[0]["body"]["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)
    record = _wait_for_record()
    assert (record.status, record.estimated) == ("succeeded", False)
    assert (record.input_tokens, record.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.charged_micro == REPORTED_COST
    assert _balance(funded_wallet) == (10_000_000 - REPORTED_COST, 0)
    assert record.metadata == {"extra": {"channel": "default", "stream": True}}
    assert_ledger_ok(funded_wallet)


def test_a_client_that_asks_for_the_usage_chunk_gets_it(
    ai: openai.OpenAI, upstream: FakeUpstream, funded_wallet: Wallet
) -> None:
    stream = ai.chat.completions.create(
        model="test-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in stream if not chunk.choices]
    assert len(usage) == 1 and usage[0] is not None
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
    )
    assert _wait_for_record().charged_micro == REPORTED_COST
    assert_ledger_ok(funded_wallet)


def test_stream_without_usage_is_charged_from_the_text_and_marked_estimated(
    ai: openai.OpenAI, upstream: FakeUpstream, funded_wallet: Wallet
) -> None:
    upstream.mode = "no_usage"
    stream = ai.chat.completions.create(
        model="test-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY

    record = _wait_for_record()
    authorization = Authorization.objects.get()
    assert record.estimated is True
    assert record.input_tokens == authorization.estimated_input_tokens == 3
    assert record.output_tokens == math.ceil(len(REPLY) / 4)
    assert record.charged_micro == _estimated_cost(record)
    assert _balance(funded_wallet) == (10_000_000 - record.charged_micro, 0)
    assert_ledger_ok(funded_wallet)


def test_embeddings_are_charged_for_their_input(ai: openai.OpenAI, funded_wallet: Wallet) -> None:
    result = ai.embeddings.create(model="test-chat", input=["first text", "second"])

    assert len(result.data) == 2
    record = _wait_for_record()
    assert (record.endpoint, record.input_tokens, record.output_tokens) == (
        "embeddings",
        PROMPT_TOKENS,
        0,
    )
    assert record.charged_micro == 30
    assert Authorization.objects.get().max_tokens == 0
    assert _balance(funded_wallet) == (10_000_000 - 30, 0)
    assert_ledger_ok(funded_wallet)


def test_models_lists_the_models_the_token_may_use_with_prices(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
) -> None:
    from usage import services

    services.model_price_create(
        model="other-model", display_name="Other", provider="Test", input_usd_per_mtok="1"
    )
    everything = make_client(make_token(customer, scopes=("inference",))[1])
    only_chat = make_client(
        make_token(customer, scopes=("inference",), allowed_models=["test-*"])[1]
    )

    assert sorted(m.id for m in everything.models.list()) == ["other-model", "test-chat"]
    services.model_price_create(
        model="other-model", display_name="Other", provider="Test", active=False
    )
    assert [m.id for m in everything.models.list()] == ["test-chat"]  # taken off the catalog
    (model,) = only_chat.models.list().data
    assert model.id == "test-chat" and model.owned_by == "Test"
    pricing = model.model_extra["pricing"]  # type: ignore[index]
    assert pricing["input_per_mtok"] == "2.5" and pricing["output_per_mtok"] == "10"
    assert pricing["tier_rate"] == "1"


# --- Failures ------------------------------------------------------------------------------


def test_upstream_500_releases_the_hold_and_records_a_failure(
    ai: openai.OpenAI, upstream: FakeUpstream, funded_wallet: Wallet
) -> None:
    upstream.mode = "fail500"
    with pytest.raises(openai.InternalServerError) as raised:
        ai.chat.completions.create(model="test-chat", messages=MESSAGES)

    assert raised.value.status_code == 502
    assert raised.value.code == "upstream_unavailable"
    assert raised.value.response.headers["X-Credits-Remaining"] == "10.000000"
    record = _only_record()
    assert (record.status, record.charged_micro, record.cost_micro) == ("failed", 0, 0)
    assert Hold.objects.get().status == Hold.Status.RELEASED
    assert _balance(funded_wallet) == (10_000_000, 0)
    assert_ledger_ok(funded_wallet)


def test_upstream_400_is_passed_on_and_nothing_is_charged(
    ai: openai.OpenAI, upstream: FakeUpstream, funded_wallet: Wallet
) -> None:
    upstream.mode = "fail400"
    with pytest.raises(openai.BadRequestError) as raised:
        ai.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True)

    assert raised.value.code == "bad_prompt"
    assert raised.value.body["message"] == "Bad prompt."  # type: ignore[index]
    assert len(upstream.requests) == 1  # a 4xx is the upstream's answer: no failover
    assert _only_record().charged_micro == 0
    assert _balance(funded_wallet) == (10_000_000, 0)
    assert_ledger_ok(funded_wallet)


def test_stalled_upstream_times_out_and_nothing_is_charged(
    ai: openai.OpenAI, upstream: FakeUpstream, funded_wallet: Wallet, settings: Any
) -> None:
    settings.GATEWAY_READ_TIMEOUT = 0.5
    upstream.mode, upstream.stall_seconds = "stall", 3

    with pytest.raises(openai.APIStatusError) as raised:
        ai.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True)

    assert raised.value.status_code == 504 and raised.value.code == "upstream_timeout"
    assert (_only_record().status, _only_record().charged_micro) == ("failed", 0)
    assert _balance(funded_wallet) == (10_000_000, 0)
    assert_ledger_ok(funded_wallet)


def test_cut_stream_is_charged_for_what_was_produced(
    ai: openai.OpenAI, upstream: FakeUpstream, funded_wallet: Wallet
) -> None:
    upstream.mode = "cut"
    received = []
    with pytest.raises(openai.APIError):
        for chunk in ai.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == REPLY[:16]  # two chunks of eight characters arrived
    record = _wait_for_record()
    assert (record.status, record.estimated) == ("failed", True)
    assert record.output_tokens == 4 and record.input_tokens == 3
    assert record.charged_micro == _estimated_cost(record) == 48
    assert _balance(funded_wallet) == (10_000_000 - 48, 0)
    assert_ledger_ok(funded_wallet)


def test_client_leaving_mid_stream_stops_the_relay_and_charges_what_was_produced(
    gateway: Gateway, upstream: FakeUpstream, token_secret: str, funded_wallet: Wallet
) -> None:
    upstream.chunk_delay = 0.3  # the whole answer would take about 3 seconds
    body = {"model": "test-chat", "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {token_secret}"}
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        assert r.headers["X-Credits-Remaining"] == _remaining(funded_wallet)
        lines = r.iter_lines()
        while '"content": "H' not in next(lines):  # the first words, then leave
            pass
    started = time.monotonic()

    record = _wait_for_record()
    assert time.monotonic() - started < 2  # settled as the client left, not at the end
    assert (record.status, record.estimated) == ("cancelled", True)
    assert 0 < record.output_tokens < math.ceil(len(REPLY) / 4)
    assert record.charged_micro == _estimated_cost(record)
    assert _balance(funded_wallet) == (10_000_000 - record.charged_micro, 0)
    assert_ledger_ok(funded_wallet)


# --- Channels --------------------------------------------------------------------------------


def test_failover_to_the_next_channel_with_its_model_name_and_key(
    ai: openai.OpenAI,
    upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    funded_wallet: Wallet,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from usage import channels

    second_upstream.mode = "fail500"
    for name, url, key, priority in [
        ("unreachable", "http://127.0.0.1:9", "sk-unreachable-key", 30),
        ("failing", second_upstream.url, "sk-failing-key", 20),  # type: ignore[attr-defined]
        ("healthy", upstream.url, "sk-healthy-key", 10),  # type: ignore[attr-defined]
    ]:
        channels.upstream_channel_save(
            channel=UpstreamChannel(
                name=name, base_url=url, priority=priority, model_map={"test-chat": "up/chat"}
            ),
            api_key=key,
        )

    completion = ai.chat.completions.create(model="test-chat", messages=MESSAGES)

    assert completion.choices[0].message.content == REPLY
    assert len(second_upstream.requests) == 1
    (sent,) = upstream.requests
    assert sent["body"]["model"] == "up/chat"
    assert sent["headers"]["authorization"] == "Bearer sk-healthy-key"
    record = _wait_for_record()
    assert record.metadata == {"extra": {"channel": "healthy", "stream": False}, "retries": 2}
    assert record.charged_micro == REPORTED_COST
    assert "-key" not in caplog.text
    assert_ledger_ok(funded_wallet)


def test_disabled_channels_are_skipped(
    ai: openai.OpenAI, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    UpstreamChannel.objects.create(
        name="off",
        base_url=second_upstream.url,  # type: ignore[attr-defined]
        enabled=False,
        priority=9,
    )
    UpstreamChannel.objects.create(name="on", base_url=upstream.url)  # type: ignore[attr-defined]

    ai.chat.completions.create(model="test-chat", messages=MESSAGES)

    assert second_upstream.requests == [] and len(upstream.requests) == 1


# --- Our refusals ------------------------------------------------------------------------------


def test_unlisted_model_is_403_and_nothing_is_charged(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
    upstream: FakeUpstream,
) -> None:
    secret = make_token(customer, scopes=("inference",), allowed_models=["gpt-*"])[1]
    before = ledger_state(funded_wallet)

    with pytest.raises(openai.PermissionDeniedError) as raised:
        make_client(secret).chat.completions.create(model="test-chat", messages=MESSAGES)

    assert raised.value.code == "model_not_allowed"
    assert raised.value.body["limit_source"] == "model_not_allowed"  # type: ignore[index]
    assert raised.value.response.headers["X-Credits-Remaining"] == "10.000000"
    assert ledger_state(funded_wallet) == before
    assert not Authorization.objects.exists() and not UsageRecord.objects.exists()
    assert upstream.requests == []
    assert_ledger_ok(funded_wallet)


def test_unknown_model_is_openais_404(ai: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        ai.chat.completions.create(model="no-such-model", messages=MESSAGES)

    assert raised.value.code == "model_not_found"
    assert raised.value.body == {  # type: ignore[comparison-overlap]
        "message": "The model 'no-such-model' does not exist.",
        "type": "invalid_request_error",
        "code": "model_not_found",
        "param": "model",
    }
    assert upstream.requests == []


def test_bad_and_missing_keys_are_401(
    make_client: Callable[[str], openai.OpenAI], chat_price: ModelPrice
) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        make_client("sk-live-nope").chat.completions.create(model="test-chat", messages=MESSAGES)
    assert raised.value.code == "invalid_token"
    assert raised.value.body["type"] == "authentication_error"  # type: ignore[index]


def test_a_token_without_the_inference_scope_is_403(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
) -> None:
    secret = make_token(customer, scopes=("read", "metering"))[1]
    with pytest.raises(openai.PermissionDeniedError) as raised:
        make_client(secret).chat.completions.create(model="test-chat", messages=MESSAGES)
    assert raised.value.code == "insufficient_scope"


def test_a_token_used_from_another_address_is_403(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
) -> None:
    secret = make_token(customer, scopes=("inference",), allowed_ips=["10.0.0.0/8"])[1]
    with pytest.raises(openai.PermissionDeniedError) as raised:
        make_client(secret).chat.completions.create(model="test-chat", messages=MESSAGES)
    assert raised.value.code == "ip_not_allowed"
    assert not Authorization.objects.exists()


def test_not_enough_credits_is_402_with_the_limit_source(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    chat_price: ModelPrice,
    upstream: FakeUpstream,
) -> None:
    secret = make_token(customer, scopes=("inference",))[1]
    with pytest.raises(openai.APIStatusError) as raised:
        make_client(secret).chat.completions.create(model="test-chat", messages=MESSAGES)

    assert raised.value.status_code == 402
    assert raised.value.body["limit_source"] == "wallet"  # type: ignore[index]
    assert raised.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert raised.value.response.headers["X-Credits-Remaining"] == "0.000000"
    assert upstream.requests == []


def test_token_rate_limit_is_429(ai: openai.OpenAI, token_secret: str, settings: Any) -> None:
    settings.API_TOKEN_RATE_LIMIT = 1
    ai.models.list()
    with pytest.raises(openai.RateLimitError) as raised:
        ai.chat.completions.create(model="test-chat", messages=MESSAGES)
    assert raised.value.code == "rate_limited"
    assert int(raised.value.response.headers["Retry-After"]) >= 1


def test_bad_input_is_400_and_nothing_is_held(
    gateway: Gateway, token_secret: str, funded_wallet: Wallet
) -> None:
    headers = {"Authorization": f"Bearer {token_secret}"}
    url = f"{gateway.url}/v1/chat/completions"
    for body, param in [
        ({"model": "test-chat"}, "messages"),
        ({"messages": MESSAGES}, "model"),
        ({"model": "test-chat", "messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
    ]:
        response = httpx.post(url, json=body, headers=headers)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param
        assert response.headers["X-Credits-Remaining"] == "10.000000"
    bad_token = {"Authorization": "Bearer sk-live-nope"}
    assert httpx.post(url, json={"model": "x"}, headers=bad_token).status_code == 401
    assert httpx.post(url, content=b"{", headers=headers).status_code == 400
    wrong_method = httpx.get(url, headers=headers)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    assert not Authorization.objects.exists()


# --- Concurrency -------------------------------------------------------------------------------


def test_twenty_concurrent_streams_on_a_balance_for_five_never_overdraw(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    chat_price: ModelPrice,
    upstream: FakeUpstream,
) -> None:
    from usage import services

    upstream.chunk_delay = 0.25  # every stream stays open about 2.5 seconds
    wallet = Wallet.objects.get(user=customer)
    token, secret = make_token(customer, scopes=("inference",))
    hold = services.authorization_estimate(
        price=chat_price, tier_rate=token.group.tier.rate, messages=MESSAGES, max_tokens=1000
    ).credits_micro
    credit(wallet, f"{(5 * hold + hold // 2) / 1_000_000:.6f}")
    concurrent_ai = make_client(secret)

    def call(_: int) -> Any:
        try:
            stream = concurrent_ai.chat.completions.create(
                model="test-chat", messages=MESSAGES, stream=True, max_tokens=1000
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except openai.APIStatusError as exc:
            return exc

    results = run_parallel(20, call)

    served = [r for r in results if r == REPLY]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(served) == 5 and len(refused) == 15
    assert all(r.status_code == 402 and r.body["limit_source"] == "wallet" for r in refused)  # type: ignore[index]
    deadline = time.monotonic() + 10
    while UsageRecord.objects.count() < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    records = list(UsageRecord.objects.all())
    assert len(records) == 5 and all(r.charged_micro == REPORTED_COST for r in records)
    balance, held = _balance(wallet)
    assert (balance, held) == (5 * hold + hold // 2 - 5 * REPORTED_COST, 0)
    assert ApiToken.objects.get(pk=token.pk).used_micro == 5 * REPORTED_COST
    assert token_of(secret).pk == token.pk
    assert_ledger_ok(wallet)
