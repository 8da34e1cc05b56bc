"""Settling gateway calls in settler processes (``manage.py gateway_settler``).

A gateway call is answered before it is settled: the hold already bounds what it can
spend. Settling (pricing the usage, capturing the hold, writing the usage record) then
takes about a third of a call's CPU. Done in the web process after the response, it still
delays the next request that process serves. When at least one settler is running, the
web process instead hands the settlement over as a job on a Redis stream and is done with
the call; a settler captures it on another core.

Nothing is lost or charged twice on the way:

* The web process hands over only while a settler is alive (each settler refreshes a
  heartbeat key every second; the web process looks at most once a second). Without one,
  or with Redis unreachable, it settles the call itself, as before.
* A settler acknowledges a job only after its capture committed. A settler that dies
  leaves its jobs pending; another claims them after ``GATEWAY_SETTLE_CLAIM_SECONDS``.
  Redelivered, a job is a replay: captures are exactly once per authorization.
* A job that keeps failing (``GATEWAY_SETTLE_MAX_DELIVERIES``) is moved to a dead-letter
  list with its error, for an operator; its hold expires as any unsettled hold does.
* A capture is charged even after its hold expired, for ``METERING_LATE_CAPTURE_SECONDS``:
  a backlog drained late still charges every call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from decimal import Decimal
from typing import Any

import redis
import redis.asyncio
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction

from config import sql
from config.errors import ApplicationError
from usage import pricing, services
from usage.gateway import metering
from usage.models import Authorization

logger = logging.getLogger(__name__)

STREAM = "gateway:settle"
GROUP = "settlers"
ALIVE = "gateway:settlers:alive"  # set by running settlers, expires without them
DEAD = "gateway:settle:dead"  # jobs that kept failing, with their error
ALIVE_SECONDS = 5
_CHECK_SECONDS = 1.0  # how long a web process trusts what it last saw of the heartbeat


# --- The job -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    """One settlement: the authorization, what to record, and whether the call produced
    anything (capture) or not (failed: release the hold, charge nothing)."""

    authorization_id: int
    produced: bool
    report: services.UsageReport
    content: services.ContentLog | None = None


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value is not None else None


def encode(job: Job) -> bytes:
    report, usage = job.report, job.report.usage
    data = {
        "v": 1,
        "authorization": job.authorization_id,
        "produced": job.produced,
        "usage": [
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_input_tokens,
            usage.reasoning_tokens,
            str(usage.task_units),
        ],
        "status": report.status,
        "error": report.error,
        "latency_ms": report.latency_ms,
        "started_at": _time(report.started_at),
        "finished_at": _time(report.finished_at),
        "estimated": report.estimated,
        "metadata": report.metadata,
        "content": dataclasses.asdict(job.content) if job.content is not None else None,
    }
    return json.dumps(data, separators=(",", ":")).encode()


def decode(raw: bytes) -> Job:
    data = json.loads(raw)
    if data.get("v") != 1:
        raise ValueError(f"unknown settlement job version {data.get('v')!r}")
    input_tokens, output_tokens, cached, reasoning, units = data["usage"]
    report = services.UsageReport(
        usage=pricing.Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached,
            reasoning_tokens=reasoning,
            task_units=Decimal(units),
        ),
        status=data["status"],
        error=data["error"],
        latency_ms=data["latency_ms"],
        started_at=_parse_time(data["started_at"]),
        finished_at=_parse_time(data["finished_at"]),
        estimated=data["estimated"],
        metadata=data["metadata"],
    )
    content = data["content"]
    return Job(
        authorization_id=data["authorization"],
        produced=data["produced"],
        report=report,
        content=services.ContentLog(**content) if content is not None else None,
    )


def job_for(*, admission: metering.Admission, outcome: metering.Outcome, produced: bool) -> Job:
    return Job(
        authorization_id=admission.authorization.pk,
        produced=produced,
        report=metering.capture_report(admission=admission, outcome=outcome),
        content=metering.content_log(admission=admission, outcome=outcome),
    )


def settle(job: Job) -> None:
    """Capture (or fail) the job's authorization: what the web process would have done."""
    authorization = Authorization.objects.select_related("price", "token").get(
        pk=job.authorization_id
    )
    settle_with = services.authorization_capture if job.produced else services.authorization_fail
    settle_with(authorization=authorization, report=job.report, content=job.content)


# --- The web process's side (on its event loop) ---------------------------------------------

_clients: dict[asyncio.AbstractEventLoop, redis.asyncio.Redis] = {}


@dataclasses.dataclass
class _Heartbeat:
    """What this process last saw of the settlers' heartbeat (event loop threads only)."""

    alive: bool = False
    until: float = 0.0  # monotonic time to look again


_seen = _Heartbeat()


def _client() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        for old_loop in [old for old in _clients if old.is_closed()]:
            _clients.pop(old_loop, None)
        client = _clients[loop] = redis.asyncio.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=0.25, socket_timeout=0.5
        )
    return client


async def close() -> None:
    """Close this event loop's Redis connections (the ASGI lifespan's shutdown)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


async def _settler_alive(client: redis.asyncio.Redis) -> bool:
    now = time.monotonic()
    if now >= _seen.until:
        _seen.alive = bool(await client.exists(ALIVE))
        _seen.until = now + _CHECK_SECONDS
    return _seen.alive


async def hand_over(
    *, admission: metering.Admission, outcome: metering.Outcome, produced: bool
) -> bool:
    """Queue the call's settlement for a settler; False (nothing queued) when handing over
    is off, no settler is alive or Redis cannot be reached: the caller settles it."""
    if not settings.GATEWAY_SETTLERS or not settings.REDIS_URL:
        return False
    client = _client()
    try:
        if not await _settler_alive(client):
            return False
        job = job_for(admission=admission, outcome=outcome, produced=produced)
        await client.xadd(STREAM, {"job": encode(job)})
    except (redis.RedisError, OSError) as exc:
        logger.warning("gateway settlers unreachable, settling in the web process: %s", exc)
        _seen.until = 0.0
        return False
    return True


# --- The settler process --------------------------------------------------------------------


def _async_commits(on: bool) -> None:
    """This connection's commits stop (or go back to) waiting for the disk."""
    if connection.vendor == "postgresql":
        sql.execute("SET synchronous_commit TO OFF" if on else "RESET synchronous_commit", [])


def _durable_barrier() -> None:
    """Return once everything this connection committed is on disk: a transaction that
    takes a transaction id commits with a flush of the log up to its commit record, which
    comes after every earlier commit's."""
    if connection.vendor == "postgresql":
        with transaction.atomic():
            sql.execute("SELECT pg_current_xact_id()", [])


class Settler:
    """Reads settlement jobs from the stream (as one consumer of the settlers' group) and
    settles them, acknowledging each once its capture committed."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        consumer: str | None = None,
        batch: int = 64,
        block_ms: int = 1000,
    ) -> None:
        self.client: Any = client  # redis-py's reply types are too loose to check
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = int(settings.GATEWAY_SETTLE_CLAIM_SECONDS * 1000)
        self.max_deliveries = settings.GATEWAY_SETTLE_MAX_DELIVERIES
        self.settled = 0  # jobs settled by this settler
        self._beat_at = 0.0
        self._claim_at = 0.0

    def run(self, stop: threading.Event) -> None:
        """Settle until ``stop`` is set; then take the heartbeat down, so web processes
        settle calls themselves again within a second unless another settler runs, and
        settle what they handed over meanwhile."""
        self._ensure_group()
        try:
            while not stop.is_set():
                self._beat()
                self._claim_abandoned()
                self._read(block_ms=self.block_ms)
            self.client.delete(ALIVE)
            time.sleep(_CHECK_SECONDS + 0.5)  # what web processes still send, then nothing
            while self._read(block_ms=None):
                pass
        finally:
            close_old_connections()

    def _read(self, *, block_ms: int | None) -> bool:
        """Settle the next batch of new jobs; False if there was none."""
        replies = self.client.xreadgroup(
            GROUP, self.consumer, {STREAM: ">"}, count=self.batch, block=block_ms
        )
        for _, entries in replies or ():
            self._settle_entries(entries)
        return bool(replies)

    def drain(self) -> int:
        """Settle every job waiting now, new or abandoned, and return how many."""
        self._ensure_group()
        before = self.settled
        self._claim_at = 0.0
        self._claim_abandoned(min_idle_ms=0)
        while self._read(block_ms=None):
            pass
        return self.settled - before

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._beat_at >= 1.0:
            self.client.set(ALIVE, self.consumer, ex=ALIVE_SECONDS)
            self._beat_at = now

    def _claim_abandoned(self, min_idle_ms: int | None = None) -> None:
        """Take over jobs another settler (or this one, after a database error) read and
        never acknowledged; give up on those delivered too often."""
        now = time.monotonic()
        if now < self._claim_at:
            return
        self._claim_at = now + max(self.claim_idle_ms / 1000 / 2, 1.0)
        idle = self.claim_idle_ms if min_idle_ms is None else min_idle_ms
        pending = self.client.xpending_range(
            STREAM, GROUP, min="-", max="+", count=self.batch, idle=idle
        )
        for item in pending:
            entry_id = item["message_id"]
            claimed = self.client.xclaim(STREAM, GROUP, self.consumer, idle, [entry_id])
            if not claimed:
                continue
            if item["times_delivered"] >= self.max_deliveries:
                self._bury(entry_id, claimed[0][1], "delivered too often")
            else:
                self._settle_entries(claimed)

    def _settle_entries(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Settle a batch, each capture committed without waiting for the disk, then wait
        once for all of them (a durable commit after them), then acknowledge: a capture's
        transaction holds its wallet's row only while it runs, not through a flush, and a
        job is acknowledged only once its capture is on disk (a database crash before
        that only means the job is delivered again: a replay)."""
        done: list[bytes] = []
        try:
            _async_commits(True)
            for entry_id, fields in entries:
                if self._settle_entry(entry_id, fields):
                    done.append(entry_id)
            _async_commits(False)
            _durable_barrier()
        except DatabaseError:
            logger.exception("a batch of settlements was not confirmed; it will be retried")
            return
        finally:
            close_old_connections()
        if done:
            self._acknowledge(*done)
            self.settled += len(done)

    def _settle_entry(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        try:
            job = decode(fields[b"job"])
            settle(job)
        except DatabaseError:
            # Left pending: claimed again after GATEWAY_SETTLE_CLAIM_SECONDS.
            logger.exception("settling %s failed; it will be retried", entry_id)
            close_old_connections()
            return False
        except (ApplicationError, Authorization.DoesNotExist, ValueError, KeyError) as exc:
            self._bury(entry_id, fields, repr(exc))
            return False
        return True

    def _acknowledge(self, *entry_ids: bytes) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(STREAM, GROUP, *entry_ids)
        pipe.xdel(STREAM, *entry_ids)
        pipe.execute()

    def _bury(self, entry_id: bytes, fields: dict[bytes, bytes], error: str) -> None:
        logger.error("settlement %s cannot be settled (%s): moved to %s", entry_id, error, DEAD)
        job = fields.get(b"job", b"").decode(errors="replace")
        self.client.rpush(DEAD, json.dumps({"id": entry_id.decode(), "error": error, "job": job}))
        self._acknowledge(entry_id)
