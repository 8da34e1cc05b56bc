"""Django's Redis cache with one client per process.

Django keeps cache objects per request context, and its Redis backend gives each one its
own connection pool, so under ASGI every request opened (and leaked until garbage
collection) a new TCP connection to Redis. Here every cache object of a process shares
one client; redis-py's connection pool is thread-safe and resets itself after a fork.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

_clients: dict[str, RedisCacheClient] = {}
_lock = threading.Lock()


class SharedRedisCache(RedisCache):
    @cached_property
    def _cache(self) -> Any:
        state: Any = self  # Django sets these in RedisCache.__init__ (untyped in the stubs)
        key = repr((state._servers, sorted(state._options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = state._class(state._servers, **state._options)
        return client

    def raw_client(self) -> Any:
        """A redis-py client for commands the cache API lacks (rate-limit counters). Built
        once per process: Django would build a new client object for every call."""
        shared = self._cache
        raw = getattr(shared, "_shared_raw_client", None)
        if raw is None:
            raw = shared._shared_raw_client = shared.get_client(None, write=True)
        return raw
