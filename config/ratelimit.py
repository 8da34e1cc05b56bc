"""A small fixed-window counter in the shared cache, for guessable inputs (log-ins,
redemption codes). The cache is Redis in every multi-node deployment, so the limit holds
across processes."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches
from django.core.cache.backends.redis import RedisCache

from config.cache import SharedRedisCache

_HIT = (
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
    name: str
    limit: int
    seconds: int

    def _key(self, subject: str) -> tuple[str, int]:
        window_start = int(time.time()) // self.seconds * self.seconds
        return f"rl:{self.name}:{subject}:{window_start}", window_start

    def retry_after(self, subject: str) -> int:
        _, window_start = self._key(subject)
        return max(1, window_start + self.seconds - int(time.time()))

    def exceeded(self, subject: str) -> bool:
        key, _ = self._key(subject)
        return int(cache.get(key, 0)) >= self.limit

    def hit(self, subject: str) -> int:
        """Count one event; returns the count in the current window."""
        key, _ = self._key(subject)
        client = _redis_client(key)
        if client is not None:
            # One round trip on the request path, atomic: count, and start the window's
            # expiry with its first event.
            return int(client.eval(_HIT, 1, cache.make_key(key), self.seconds + 1))
        if cache.add(key, 1, timeout=self.seconds + 1):
            return 1
        try:
            return int(cache.incr(key))
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=self.seconds + 1)
            return 1

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
