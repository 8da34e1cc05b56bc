"""Spend controls and content logging through the OpenAI-compatible gateway, with the
official client: refusals are OpenAI-shaped with ``limit_source`` and ``Retry-After``;
content is kept only for tokens (or organizations) that log it; with Redis gone the
gateway keeps serving, and balances and budgets stay exact."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from accounts.models import User
from tests.gateway.fake_upstream import REPLY, FakeUpstream
from tests.gateway.test_gateway import MESSAGES, REPORTED_COST
from tests.helpers import assert_ledger_ok, credit
from tests.usage.conftest import make_token
from usage.models import ModelPrice, UsageContent, UsageRecord
from wallet import services as wallet_services
from wallet.models import Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def _records_settled(count: int) -> list[UsageRecord]:
    """Streams settle after the last byte: wait for the records."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = list(UsageRecord.objects.order_by("id"))
        if len(records) >= count:
            return records
        time.sleep(0.02)
    raise AssertionError("the call was not settled")


def _content_of(record: UsageRecord) -> UsageContent | None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        content = UsageContent.objects.filter(record=record).first()
        if content is not None:
            return content
        time.sleep(0.02)
    return None


def test_content_is_logged_only_for_a_token_that_logs_it(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
    upstream: FakeUpstream,
) -> None:
    quiet = make_token(customer, scopes=("inference",))[1]
    logging_ = make_token(customer, scopes=("inference",), log_content=True)[1]
    messages = [{"role": "system", "content": "Be brief."}, *MESSAGES]

    make_client(quiet).chat.completions.create(model="test-chat", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    make_client(logging_).chat.completions.create(
        model="test-chat",
        messages=messages,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
    )
    quiet_record, logged_record = _records_settled(2)
    assert not UsageContent.objects.filter(record=quiet_record).exists()
    content = UsageContent.objects.get(record=logged_record)
    assert content.system == "Be brief."
    assert json.loads(content.messages) == MESSAGES
    assert json.loads(content.tools) == TOOLS
    assert content.response == REPLY
    assert content.context_bytes == len(
        (content.system + content.messages + content.tools).encode()
    )
    assert UsageContent.objects.count() == 1
    assert_ledger_ok(funded_wallet)


def test_a_null_character_in_logged_content_is_kept_as_a_replacement_character(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
    upstream: FakeUpstream,
) -> None:
    # PostgreSQL text cannot hold U+0000: written as it came, the content's insert failed
    # and took the capture with it, so the call went uncharged.
    secret = make_token(customer, scopes=("inference",), log_content=True)[1]
    messages = [{"role": "system", "content": "Be\x00 brief."}, *MESSAGES]
    make_client(secret).chat.completions.create(model="test-chat", messages=messages)  # type: ignore[arg-type]
    (record,) = _records_settled(1)
    assert record.charged_micro == REPORTED_COST
    content = UsageContent.objects.get(record=record)
    assert content.system == "Be\ufffd brief."
    assert_ledger_ok(funded_wallet)


def test_a_streamed_answer_is_logged(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
    upstream: FakeUpstream,
) -> None:
    secret = make_token(customer, scopes=("inference",), log_content=True)[1]
    stream = make_client(secret).chat.completions.create(
        model="test-chat",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY
    (record,) = _records_settled(1)
    content = _content_of(record)
    assert content is not None and content.response == REPLY
    assert record.charged_micro == REPORTED_COST
    assert_ledger_ok(funded_wallet)


def test_rate_limit_is_openais_429_with_retry_after(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
    upstream: FakeUpstream,
) -> None:
    ai = make_client(make_token(customer, scopes=("inference",), rate_limit_rpm=2)[1])
    for _ in range(2):
        ai.chat.completions.create(model="test-chat", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as raised:
        ai.chat.completions.create(model="test-chat", messages=MESSAGES)  # type: ignore[arg-type]
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.body["limit_source"] == "rate_limit"  # type: ignore[index]
    assert raised.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert 1 <= int(raised.value.response.headers["Retry-After"]) <= 60
    assert len(upstream.requests) == 2
    assert_ledger_ok(funded_wallet)


def test_budget_and_minimum_balance_refusals_carry_their_limit_source(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
    upstream: FakeUpstream,
) -> None:
    # max_tokens 100 holds 1,000 µcr + the input: a budget of 0.001 allows none.
    budgeted = make_token(
        customer, scopes=("inference",), budget_period="daily", budget_credits="0.001"
    )[1]
    with pytest.raises(openai.APIStatusError) as raised:
        make_client(budgeted).chat.completions.create(
            model="test-chat",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=100,
        )
    assert raised.value.status_code == 402
    assert raised.value.body["limit_source"] == "token_budget"  # type: ignore[index]
    assert int(raised.value.response.headers["Retry-After"]) <= 86400

    wallet_services.wallet_set_min_balance(wallet=funded_wallet, min_balance_micro=20_000_000)
    with pytest.raises(openai.APIStatusError) as raised:
        make_client(make_token(customer, scopes=("inference",))[1]).chat.completions.create(
            model="test-chat",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    assert raised.value.status_code == 402
    assert raised.value.body["limit_source"] == "minimum_balance"  # type: ignore[index]
    assert upstream.requests == []
    assert_ledger_ok(funded_wallet)


def test_redis_gone_the_gateway_keeps_serving_and_charges_exactly(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
    upstream: FakeUpstream,
    own_redis: Any,
    caplog: Any,
) -> None:
    from config import ratelimit

    ratelimit._warn_state["last"] = 0.0
    ai = make_client(make_token(customer, scopes=("inference",), rate_limit_rpm=1)[1])
    ai.chat.completions.create(model="test-chat", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError):
        ai.chat.completions.create(model="test-chat", messages=MESSAGES)  # type: ignore[arg-type]
    own_redis.kill()
    own_redis.wait()
    with caplog.at_level(logging.WARNING, logger="config.ratelimit"):
        for _ in range(3):
            ai.chat.completions.create(model="test-chat", messages=MESSAGES)  # type: ignore[arg-type]
    assert any("failing open" in r.getMessage() for r in caplog.records)
    _records_settled(4)
    wallet = Wallet.objects.get(pk=funded_wallet.pk)
    assert (wallet.balance, wallet.held) == (10_000_000 - 4 * REPORTED_COST, 0)
    credit(wallet, "1")  # the ledger still takes writes as usual
    assert_ledger_ok(funded_wallet)


def test_a_failed_call_keeps_its_prompt_when_logging(
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: ModelPrice,
    upstream: FakeUpstream,
) -> None:
    upstream.mode = "fail500"
    secret = make_token(customer, scopes=("inference",), log_content=True)[1]
    with pytest.raises(openai.InternalServerError):
        make_client(secret).chat.completions.create(model="test-chat", messages=MESSAGES)  # type: ignore[arg-type]
    (record,) = _records_settled(1)
    assert (record.status, record.charged_micro) == ("failed", 0)
    content = _content_of(record)
    assert content is not None
    assert json.loads(content.messages) == MESSAGES and content.response == ""
    assert_ledger_ok(funded_wallet)
