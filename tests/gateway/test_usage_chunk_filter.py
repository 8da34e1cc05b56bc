"""The relay's filter of the usage-only event, on byte streams cut anywhere."""

from __future__ import annotations

import json

import pytest

from usage.gateway.views import UsageChunkFilter


def _event(data: dict, newline: bytes = b"\n") -> bytes:
    return b"data: " + json.dumps(data).encode() + newline + newline


CONTENT = {"choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": None}
USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
LAST_WITH_USAGE = {"choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": 3}}


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("cut", [1, 2, 7, 64, 10_000])
def test_only_the_usage_only_event_is_dropped_wherever_the_stream_is_cut(
    newline: bytes, cut: int
) -> None:
    kept = [_event(CONTENT, newline), _event(LAST_WITH_USAGE, newline)]
    done = b"data: [DONE]" + newline + newline
    stream = kept[0] + kept[1] + _event(USAGE, newline) + done
    sieve = UsageChunkFilter()
    out = b"".join(sieve.feed(stream[i : i + cut]) for i in range(0, len(stream), cut))
    out += sieve.flush()
    assert out == kept[0] + kept[1] + done


def test_complete_events_pass_at_once_and_an_unfinished_one_waits() -> None:
    sieve = UsageChunkFilter()
    first = _event(CONTENT)
    assert sieve.feed(first + first[:10]) == first
    assert sieve.feed(first[10:]) == first
    assert sieve.flush() == b""


def test_a_stream_cut_inside_the_usage_event_drops_it_at_the_end() -> None:
    sieve = UsageChunkFilter()
    usage = _event(USAGE)
    assert sieve.feed(usage[:-2]) == b""
    assert sieve.flush() == b""
