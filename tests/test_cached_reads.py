"""``config.cached_reads``: the memos are bounded and expire, an authorization is taken
once, and an attempt that read a kept copy may not go on where nothing checks it."""

from __future__ import annotations

import pytest

from config import cached_reads
from config.cached_reads import Memo


def test_a_memo_is_bounded_and_its_entries_expire() -> None:
    memo: Memo[int] = Memo(size=2, seconds=60)
    memo.put("a", 1)
    memo.put("b", 2)
    memo.put("a", 3)  # replacing keeps the size
    assert (memo.get("a"), memo.get("b")) == (3, 2)
    memo.put("c", 4)  # full: starts again empty
    assert (memo.get("a"), memo.get("b"), memo.get("c")) == (None, None, 4)
    expired: Memo[int] = Memo(size=2, seconds=0)
    expired.put("a", 1)
    assert expired.get("a") is None and expired.pop("a") is None
    off: Memo[int] = Memo(size=0, seconds=60)
    off.put("a", 1)
    assert off.get("a") is None


def test_a_kept_entry_is_popped_once() -> None:
    memo: Memo[str] = Memo(size=4, seconds=60)
    memo.put((1, 2), "authorization")
    assert memo.pop((1, 2)) == "authorization"
    assert memo.pop((1, 2)) is None
    assert memo.hits == 1


def test_only_an_attempt_that_used_a_kept_copy_must_read_again() -> None:
    cached_reads.require_uncached()  # outside any attempt: nothing kept was read
    assert not cached_reads.keeping() and not cached_reads.reading_cached()
    with cached_reads.attempt(cached=True) as first:
        assert cached_reads.keeping() and cached_reads.reading_cached()
        cached_reads.require_uncached()  # nothing used yet
        cached_reads.used()
        with pytest.raises(cached_reads.ReadAgain):
            cached_reads.require_uncached()
        cached_reads.confirm()
    assert first.used and first.confirmed
    with cached_reads.attempt(cached=False) as second:
        assert cached_reads.keeping() and not cached_reads.reading_cached()
        cached_reads.require_uncached()
    assert not second.used
    assert cached_reads.current() is None
