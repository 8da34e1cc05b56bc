"""Counters in Redis that hold across every web process.

* ``Window``: a small fixed-window counter in the shared cache, for guessable inputs
  (log-ins, redemption codes) and the per-token API throttle.
* ``RollingLimit``: per-token requests and tokens per minute over a rolling 60-second
  window (one-second buckets), checked and counted atomically by one Lua script.

Rate limits fail open: when Redis cannot be reached the request is let through and a
warning is logged (at most once a minute per process). Money never depends on Redis.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches
from django.core.cache.backends.redis import RedisCache

from config.cache import SharedRedisCache
from config.errors import LimiterUnavailable

logger = logging.getLogger(__name__)


class _Script:
    """A Lua script run by its SHA-1 (``EVALSHA``): Redis neither receives nor hashes the
    text on every call. The first call on a Redis that has not seen it yet (after a
    restart or ``SCRIPT FLUSH``) sends the text once (``EVAL``), which caches it again."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, client: Any, numkeys: int, *keys_and_args: Any) -> Any:
        connection = _thread_connections.get(client)
        for attempt in (1, 2):
            try:
                connection.send_command("EVALSHA", self.sha, numkeys, *keys_and_args)
                return connection.read_response()
            except redis.exceptions.NoScriptError:
                return client.eval(self.text, numkeys, *keys_and_args)
            except redis.exceptions.ConnectionError:
                # A connection Redis closed since its last use (a restart): once more on a
                # new one, as redis-py's own client retries. Timeouts are not retried.
                connection.disconnect()
                if attempt == 2:
                    raise
            except BaseException:
                connection.disconnect()  # a reply may still be on its way: never reuse it
                raise
        raise AssertionError("unreachable")


class _ThreadConnections(threading.local):
    """Each thread's own connection to the client's Redis, for the scripts on the request
    path. redis-py's client takes a connection from its pool, polls it, wraps the call in
    retries and metrics and hands it back, on every command, and on this path that cost
    more than the round trip; a thread runs one request at a time, so a connection of its
    own needs none of it. Made by the client's pool's own connection class and settings
    (address, database, protocol, timeouts), and made again if the client's pool changes
    or the process was forked since (the parent keeps using its socket: the child leaves it
    alone, as redis-py's pool does)."""

    pool: Any = None
    connection: Any = None
    pid: int = 0

    def get(self, client: Any) -> Any:
        pool = client.connection_pool
        if pool is not self.pool or self.pid != os.getpid():
            if self.connection is not None and self.pid == os.getpid():
                self.connection.disconnect()
            self.connection = pool.connection_class(**pool.connection_kwargs)
            self.pool, self.pid = pool, os.getpid()
        return self.connection


_thread_connections = _ThreadConnections()


_HIT = _Script(
    "local n = redis.call('INCR', KEYS[1]) "
    "if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end "
    "return n"
)


def _redis_client(key: str) -> Any:
    """The raw Redis client behind the cache, or None for other cache backends. Django's
    Redis cache stores integers unpickled, so ``cache.get`` reads these counters as ints."""
    backend = caches[DEFAULT_CACHE_ALIAS]
    if isinstance(backend, SharedRedisCache):
        return backend.raw_client()
    if isinstance(backend, RedisCache):
        return backend._cache.get_client(key, write=True)
    return None


@dataclass(frozen=True)
class Window:
    """``fail_open``: when Redis cannot be reached, let the event through (logged), for
    limits on the API's own throughput. Off, the default, for limits that stop guessing
    (log-ins, redemption codes): the attempt is refused with ``LimiterUnavailable``."""

    name: str
    limit: int
    seconds: int
    fail_open: bool = False

    def _key(self, subject: str) -> tuple[str, int]:
        window_start = int(time.time()) // self.seconds * self.seconds
        return f"rl:{self.name}:{subject}:{window_start}", window_start

    def retry_after(self, subject: str) -> int:
        _, window_start = self._key(subject)
        return max(1, window_start + self.seconds - int(time.time()))

    def exceeded(self, subject: str) -> bool:
        key, _ = self._key(subject)
        try:
            return int(cache.get(key, 0)) >= self.limit
        except (redis.RedisError, OSError) as exc:
            return self._unavailable(exc) > self.limit

    def hit(self, subject: str) -> int:
        """Count one event; returns the count in the current window. When Redis is
        unreachable: 0 if the limit fails open, else ``LimiterUnavailable``."""
        key, _ = self._key(subject)
        client = _redis_client(key)
        if client is not None:
            # One round trip on the request path, atomic: count, and start the window's
            # expiry with its first event.
            try:
                return int(_HIT(client, 1, cache.make_key(key), self.seconds + 1))
            except (redis.RedisError, OSError) as exc:
                return self._unavailable(exc)
        if cache.add(key, 1, timeout=self.seconds + 1):
            return 1
        try:
            return int(cache.incr(key))
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=self.seconds + 1)
            return 1

    def _unavailable(self, exc: BaseException) -> int:
        if self.fail_open:
            warn_unavailable(exc)
            return 0
        logger.error("Refusing %s: its limit cannot be checked (%s: %s)", self.name,
                     type(exc).__name__, exc)  # fmt: skip
        raise LimiterUnavailable() from exc

    def reset(self, subject: str) -> None:
        key, _ = self._key(subject)
        cache.delete(key)

    def unhit(self, subject: str) -> None:
        """Take back one event counted by ``hit``: callers that must count an attempt before
        knowing whether it failed (so a burst of parallel guesses cannot slip past the
        limit) give it back when it turned out fine."""
        key, _ = self._key(subject)
        with contextlib.suppress(ValueError):  # the window rolled over meanwhile
            cache.decr(key)


# --- Fail open, loudly but not per request ----------------------------------------------

_WARN_EVERY_SECONDS = 60.0
_warn_lock = threading.Lock()
_warn_state = {"last": 0.0, "suppressed": 0}


def warn_unavailable(exc: BaseException) -> None:
    """Log that a limit was skipped because Redis is unreachable: the first time, then at
    most once a minute per process, with how many were skipped in between."""
    now = time.monotonic()
    with _warn_lock:
        if now - _warn_state["last"] < _WARN_EVERY_SECONDS:
            _warn_state["suppressed"] += 1
            return
        skipped, _warn_state["suppressed"], _warn_state["last"] = _warn_state["suppressed"], 0, now
    logger.warning(
        "Rate limits are failing open: Redis is unavailable (%s: %s); %d more skipped "
        "since the last warning.",
        type(exc).__name__,
        exc,
        skipped,
    )


# --- Rolling per-minute limits -------------------------------------------------------------

# KEYS: one hash per limit (bucket second -> count). ARGV: now (whole seconds), window
# seconds, then (limit, cost) per key; a limit of 0 is off. Every limit is checked before
# any is counted, so a refused request counts nowhere. Returns {0} or {index of the limit
# hit (1-based), seconds until it has room, its current count}.
_ROLLING = _Script("""
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
for i = 1, #KEYS do
  local limit = tonumber(ARGV[1 + 2 * i])
  local cost = tonumber(ARGV[2 + 2 * i])
  if limit > 0 then
    local data = redis.call('HGETALL', KEYS[i])
    local used = 0
    local buckets = {}
    for j = 1, #data, 2 do
      local second = tonumber(data[j])
      local count = tonumber(data[j + 1])
      if second <= now - window then
        redis.call('HDEL', KEYS[i], data[j])
      else
        used = used + count
        buckets[#buckets + 1] = {second, count}
      end
    end
    if used + cost > limit then
      table.sort(buckets, function(a, b) return a[1] < b[1] end)
      local excess = used + cost - limit
      local wait = window
      for _, bucket in ipairs(buckets) do
        excess = excess - bucket[2]
        if excess <= 0 then
          wait = bucket[1] + window - now
          break
        end
      end
      return {i, wait, used}
    end
  end
end
for i = 1, #KEYS do
  local limit = tonumber(ARGV[1 + 2 * i])
  local cost = tonumber(ARGV[2 + 2 * i])
  if limit > 0 and cost > 0 then
    redis.call('HINCRBY', KEYS[i], ARGV[1], cost)
    redis.call('EXPIRE', KEYS[i], window + 1)
  end
end
return {0, 0, 0}
""")

# KEYS: one limit's hash. ARGV: the bucket second, the correction. Only a bucket that
# exists (still in the window, something counted in it) is corrected.
_ADJUST = _Script("""
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
end
return 0
""")

_limiter_clients: dict[str, Any] = {}
_local_lock = threading.Lock()


def _limiter_client() -> Any:
    """``RATE_LIMIT_REDIS_URL``'s client (short timeouts: a slow Redis must not stall
    requests), else the cache's Redis, else None (an in-process cache: local runs)."""
    url = settings.RATE_LIMIT_REDIS_URL
    if not url:
        return _redis_client("")
    client = _limiter_clients.get(url)
    if client is None:
        client = _limiter_clients[url] = redis.Redis.from_url(
            url, socket_connect_timeout=0.25, socket_timeout=0.5
        )
    return client


@dataclass(frozen=True)
class Refusal:
    limit: str  # the name of the limit hit
    maximum: int
    current: int
    retry_after: int


@dataclass(frozen=True)
class RollingLimit:
    """Rolling-window limits on one subject, e.g. a token's ``rpm`` and ``tpm``: each
    ``(name, maximum, cost)`` allows at most ``maximum`` cost per ``seconds``."""

    scope: str
    seconds: int = 60

    def _key(self, subject: str, name: str) -> str:
        # One hash tag per subject: a token's keys live on one Redis Cluster slot.
        return cache.make_key(f"rlw:{self.scope}:{{{subject}}}:{name}")

    def hit(
        self, subject: str, limits: list[tuple[str, int, int]], *, now: float | None = None
    ) -> Refusal | None:
        """Check every limit and, if none is exceeded, count the costs: atomic, one round
        trip. Returns the first limit exceeded (nothing counted), or None. A Redis error
        lets the request through (logged)."""
        active = [(name, maximum, cost) for name, maximum, cost in limits if maximum]
        if not active:
            return None
        second = int(time.time() if now is None else now)
        keys = [self._key(subject, name) for name, _, _ in active]
        args: list[int] = [second, self.seconds]
        for _, maximum, cost in active:
            args += [maximum, cost]
        try:
            client = _limiter_client()
            if client is None:
                outcome = self._hit_local(keys, args)
            else:
                outcome = [int(v) for v in _ROLLING(client, len(keys), *keys, *args)]
        except (redis.RedisError, OSError) as exc:
            warn_unavailable(exc)
            return None
        index, wait, current = outcome
        if not index:
            return None
        name, maximum, _ = active[index - 1]
        return Refusal(name, maximum, current, max(int(wait), 1))

    def adjust(
        self, subject: str, name: str, delta: int, *, at: float, now: float | None = None
    ) -> None:
        """Correct by ``delta`` what was counted at the second ``at`` (a request counted by
        its estimate, once its real cost is known). Nothing happens once that second has
        left the window, or if nothing was counted then; fails open like ``hit``."""
        second = int(at)
        if not delta or second <= int(time.time() if now is None else now) - self.seconds:
            return
        key = self._key(subject, name)
        try:
            client = _limiter_client()
            if client is not None:
                _ADJUST(client, 1, key, second, delta)
                return
            with _local_lock:
                table = dict(cache.get(key) or {})
                if second in table:
                    table[second] += delta
                    cache.set(key, table, timeout=self.seconds + 1)
        except (redis.RedisError, OSError) as exc:
            warn_unavailable(exc)

    def _hit_local(self, keys: list[str], args: list[int]) -> list[int]:
        """The script's algorithm on a non-Redis cache (one process: local runs)."""
        now, window = args[0], args[1]
        with _local_lock:
            tables = [dict(cache.get(key) or {}) for key in keys]
            for i, table in enumerate(tables):
                limit, cost = args[2 + 2 * i], args[3 + 2 * i]
                for second in [s for s in table if s <= now - window]:
                    del table[second]
                used = sum(table.values())
                if used + cost > limit:
                    excess, wait = used + cost - limit, window
                    for second in sorted(table):
                        excess -= table[second]
                        if excess <= 0:
                            wait = second + window - now
                            break
                    return [i + 1, wait, used]
            for i, table in enumerate(tables):
                cost = args[3 + 2 * i]
                if cost:
                    table[now] = table.get(now, 0) + cost
                    cache.set(keys[i], table, timeout=window + 1)
        return [0, 0, 0]
