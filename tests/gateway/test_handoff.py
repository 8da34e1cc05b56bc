"""Settler processes (``usage.gateway.handoff``): while one runs, the gateway hands each
answered call's settlement over on a Redis stream and a settler captures it, exactly once,
whatever dies on the way. Real Redis, real PostgreSQL, the live gateway; the settler runs
in a thread of the test process, as ``manage.py gateway_settler`` runs it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django.db import connections

from accounts.models import User
from tests.gateway.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, REPLY
from tests.gateway.test_gateway import MESSAGES, REPORTED_COST
from tests.helpers import assert_ledger_ok, ledger_state
from tests.usage.conftest import make_token
from usage import pricing, services
from usage.gateway import handoff
from usage.models import Authorization, UsageContent, UsageRecord
from wallet.models import Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(handoff.STREAM, handoff.ALIVE, handoff.DEAD)
    yield client
    client.delete(handoff.STREAM, handoff.ALIVE, handoff.DEAD)
    handoff._seen.until = 0.0  # the next test's gateway looks at the heartbeat again
    client.close()


class SettlerThread:
    def __init__(self, client: redis.Redis) -> None:
        self.settler = handoff.Settler(client, block_ms=50)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.settler.run(self.stop)
        finally:
            connections.close_all()

    def start(self) -> SettlerThread:
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.settler.client.exists(handoff.ALIVE):
            assert time.monotonic() < deadline, "the settler did not start"
            time.sleep(0.01)
        handoff._seen.until = 0.0  # the gateway sees it at once
        return self

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


@pytest.fixture
def settler(client: redis.Redis, gateway: Any) -> Iterator[handoff.Settler]:
    running = SettlerThread(client).start()
    yield running.settler
    running.join()


def _records(count: int, timeout: float = 10.0) -> list[UsageRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = list(UsageRecord.objects.order_by("id"))
        if len(records) >= count:
            return records
        time.sleep(0.02)
    raise AssertionError(f"{count} calls were not settled")


def _settled_by(settler: handoff.Settler, count: int, timeout: float = 10.0) -> int:
    """How many jobs ``settler`` has settled, once it reaches ``count`` (a record is
    visible as soon as its capture commits; the settler counts the job after
    acknowledging it)."""
    deadline = time.monotonic() + timeout
    while settler.settled < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return settler.settled


def _queue_empty(client: redis.Redis) -> bool:
    pending = client.xpending(handoff.STREAM, handoff.GROUP)["pending"]
    return client.xlen(handoff.STREAM) == 0 and pending == 0


def test_a_settler_settles_the_calls_the_gateway_hands_over(
    settler: handoff.Settler,
    client: redis.Redis,
    ai: openai.OpenAI,
    funded_wallet: Wallet,
) -> None:
    answer = ai.chat.completions.create(model="test-chat", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == REPLY
    stream = ai.chat.completions.create(model="test-chat", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY
    records = _records(2)
    assert [r.charged_micro for r in records] == [REPORTED_COST, REPORTED_COST]
    assert [(r.input_tokens, r.output_tokens) for r in records] == [
        (PROMPT_TOKENS, COMPLETION_TOKENS)
    ] * 2
    assert _settled_by(settler, 2) == 2  # the settler did it, not the web process
    assert _queue_empty(client)
    assert not Authorization.objects.filter(settled_at__isnull=True).exists()
    assert ledger_state(funded_wallet)["balance"] == 10_000_000 - 2 * REPORTED_COST
    assert_ledger_ok(funded_wallet)


def test_logged_content_travels_with_the_job(
    settler: handoff.Settler,
    make_client: Callable[[str], openai.OpenAI],
    customer: User,
    funded_wallet: Wallet,
    chat_price: Any,
) -> None:
    secret = make_token(customer, scopes=("inference",), log_content=True)[1]
    messages = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    make_client(secret).chat.completions.create(model="test-chat", messages=messages)  # type: ignore[arg-type]
    (record,) = _records(1)
    content = UsageContent.objects.get(record=record)
    assert (content.system, content.response) == ("Be brief.", REPLY)
    assert _settled_by(settler, 1) == 1


def test_without_a_settler_the_gateway_settles_its_own_calls(
    client: redis.Redis, gateway: Any, ai: openai.OpenAI, funded_wallet: Wallet
) -> None:
    ai.chat.completions.create(model="test-chat", messages=MESSAGES)  # type: ignore[arg-type]
    gateway.wait_idle()  # the web process's own settlement is part of the call
    assert UsageRecord.objects.get().charged_micro == REPORTED_COST
    assert client.xlen(handoff.STREAM) == 0


def test_handing_over_can_be_turned_off(
    settler: handoff.Settler,
    client: redis.Redis,
    gateway: Any,
    ai: openai.OpenAI,
    funded_wallet: Wallet,
    settings: Any,
) -> None:
    settings.GATEWAY_SETTLERS = False
    ai.chat.completions.create(model="test-chat", messages=MESSAGES)  # type: ignore[arg-type]
    gateway.wait_idle()
    assert UsageRecord.objects.get().charged_micro == REPORTED_COST
    assert settler.settled == 0


# --- Jobs, without the gateway ---------------------------------------------------------------


@pytest.fixture
def authorization(customer: User, funded_wallet: Wallet, chat_price: Any) -> Authorization:
    token, _ = make_token(customer, scopes=("inference",))
    return services.authorization_create(
        token=token, model="test-chat", input_tokens=PROMPT_TOKENS, max_tokens=100
    ).authorization


def _job(authorization_id: int, **content: Any) -> handoff.Job:
    return handoff.Job(
        authorization_id=authorization_id,
        produced=True,
        report=services.UsageReport(
            usage=pricing.Usage(input_tokens=PROMPT_TOKENS, output_tokens=COMPLETION_TOKENS),
            metadata={"extra": {"channel": "default", "stream": False}},
        ),
        content=services.ContentLog(**content) if content else None,
    )


def test_a_job_survives_its_encoding() -> None:
    job = _job(7, system="Be brief.", messages=[{"role": "user", "content": "hi"}])
    assert handoff.decode(handoff.encode(job)) == job


def test_a_job_delivered_twice_charges_once(
    client: redis.Redis, authorization: Authorization, funded_wallet: Wallet
) -> None:
    # A settler that captured and died before acknowledging: the next one settles again.
    job = _job(authorization.pk)
    handoff.settle(job)
    after_first = ledger_state(funded_wallet)
    handoff.settle(job)
    assert ledger_state(funded_wallet) == after_first
    assert UsageRecord.objects.get().charged_micro == REPORTED_COST
    assert_ledger_ok(funded_wallet)


def test_jobs_a_dead_settler_left_are_claimed_by_another(
    client: redis.Redis, authorization: Authorization, funded_wallet: Wallet, settings: Any
) -> None:
    settings.GATEWAY_SETTLE_CLAIM_SECONDS = 0.2
    dead = handoff.Settler(client, consumer="dead")
    dead._ensure_group()
    client.xadd(handoff.STREAM, {"job": handoff.encode(_job(authorization.pk))})
    # The dead settler read it and never acknowledged it.
    assert client.xreadgroup(handoff.GROUP, "dead", {handoff.STREAM: ">"}, count=10)
    alive = handoff.Settler(client, consumer="alive")
    alive._claim_abandoned()  # not idle long enough yet
    assert alive.settled == 0 and not UsageRecord.objects.exists()
    time.sleep(0.3)
    alive._claim_at = 0.0
    alive._claim_abandoned()
    assert alive.settled == 1
    assert UsageRecord.objects.get().charged_micro == REPORTED_COST
    assert _queue_empty(client)


def test_a_job_that_cannot_be_settled_goes_to_the_dead_letter_list(
    client: redis.Redis, authorization: Authorization, funded_wallet: Wallet
) -> None:
    before = ledger_state(funded_wallet)
    client.xadd(handoff.STREAM, {"job": handoff.encode(_job(authorization.pk + 1000))})
    client.xadd(handoff.STREAM, {"job": b"{not json"})
    settler = handoff.Settler(client)
    assert settler.drain() == 0
    dead = client.lrange(handoff.DEAD, 0, -1)
    assert len(dead) == 2 and b"DoesNotExist" in dead[0]
    assert _queue_empty(client)
    assert ledger_state(funded_wallet) == before
    assert not UsageRecord.objects.exists()


def test_a_stopping_settler_settles_what_was_handed_over_meanwhile(
    client: redis.Redis, authorization: Authorization, funded_wallet: Wallet
) -> None:
    running = SettlerThread(client).start()
    running.stop.set()
    time.sleep(0.2)  # it has taken its heartbeat down; a web process had not looked yet
    client.xadd(handoff.STREAM, {"job": handoff.encode(_job(authorization.pk))})
    running.join()
    assert running.settler.settled == 1
    assert not client.exists(handoff.ALIVE)
    assert UsageRecord.objects.get().charged_micro == REPORTED_COST


def test_with_redis_unreachable_the_web_process_settles(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    handoff._seen.until = 0.0

    async def hand_over() -> bool:
        # It gives up at the heartbeat, before looking at the call.
        handed = await handoff.hand_over(admission=None, outcome=None, produced=True)  # type: ignore[arg-type]
        await handoff.close()
        return handed

    assert asyncio.run(hand_over()) is False
    assert "settling in the web process" in caplog.text
