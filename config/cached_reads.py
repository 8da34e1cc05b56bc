"""Reads the metering fast path may take from its process's memory, and the rule that
makes them safe.

Three things a metering request reads are kept per process for a short while: its API
token (with owner, group, tier, membership, wallet minimum: ``accounts.services``), the
current price of a model (``usage.selectors``) and the authorizations this process opened
(for their capture). A kept copy can be out of date: another process, the admin or plain
SQL may have changed the row a moment ago. So a request that used one is an *attempt*:

* the only writes it may make are the metering functions' (``usage_authorization_open``,
  ``usage_capture_counted``), which take what was read from memory (the token's state
  digest, the price version) and, under the rows' locks, refuse to act when it is no longer
  current; any other step that would write raises ``ReadAgain`` first
  (``require_uncached``);
* its answer is sent only if such a function confirmed the reads (``confirm``); any other
  answer (a refusal, a replay, a step that cannot check) is dropped, nothing having been
  written, and the request is answered again reading everything from the database
  (``usage.fastpath``).

Outside an attempt (every other caller) nothing is read from memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.conf import settings

from config.sql import vendor

V = TypeVar("V")


class ReadAgain(Exception):
    """The attempt used a kept copy and reached a step that cannot confirm it, or a
    function found it out of date: nothing was written; answer the request again reading
    from the database."""


@dataclass
class Attempt:
    cached: bool  # may read kept copies (the first attempt), else only refresh them
    used: bool = False  # did read one
    confirmed: bool = False  # a metering function confirmed what was read


_current: ContextVar[Attempt | None] = ContextVar("metering_attempt", default=None)


@contextmanager
def attempt(*, cached: bool) -> Iterator[Attempt]:
    current = Attempt(cached=cached)
    reset = _current.set(current)
    try:
        yield current
    finally:
        _current.reset(reset)


def current() -> Attempt | None:
    return _current.get()


def reading_cached() -> bool:
    """Kept copies may be read (and then must be confirmed)."""
    now = _current.get()
    return now is not None and now.cached


def keeping() -> bool:
    """Inside an attempt: what is read from the database may be kept for the next ones."""
    return _current.get() is not None


def used() -> None:
    now = _current.get()
    assert now is not None and now.cached
    now.used = True


def confirm() -> None:
    now = _current.get()
    if now is not None:
        now.confirmed = True


def require_uncached() -> None:
    """Refuse to go on (``ReadAgain``) if the attempt read a kept copy: the caller is about
    to write, or to answer, on what no function has checked."""
    now = _current.get()
    if now is not None and now.used:
        raise ReadAgain()


class Memo(Generic[V]):
    """A bounded map kept for ``seconds`` per entry (one process, any thread: each
    operation is a single dict call). Full, it starts again empty: simple, and refilled by
    the next requests."""

    def __init__(self, *, size: int, seconds: float) -> None:
        self.size = size
        self.seconds = seconds
        self._entries: dict[Any, tuple[float, V]] = {}
        self.hits = 0  # for operators and tests

    def get(self, key: Any) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._entries.pop(key, None)
            return None
        self.hits += 1
        return entry[1]

    def pop(self, key: Any) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        self.hits += 1
        return entry[1]

    def put(self, key: Any, value: V) -> None:
        if self.size <= 0:
            return
        if len(self._entries) >= self.size and key not in self._entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.seconds, value)

    def evict(self, key: Any) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


MEMO_SECONDS = 60.0
_memos: dict[str, Memo[Any]] = {}


def memo(name: str) -> Memo[Any] | None:
    """This process's memo ``name`` (tokens, prices, authorizations); None when
    ``METERING_CACHE_SIZE`` is 0 or the database is not PostgreSQL (the checks are
    PostgreSQL functions)."""
    size = settings.METERING_CACHE_SIZE
    if size <= 0 or vendor() != "postgresql":
        return None
    found = _memos.get(name)
    if found is None or found.size != size:
        found = _memos[name] = Memo(size=size, seconds=MEMO_SECONDS)
    return found


def clear() -> None:
    for kept in _memos.values():
        kept.clear()
