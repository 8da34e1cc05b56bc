"""The relay's meter dropping the usage-only event for clients that did not ask for it,
on byte streams cut anywhere; it still reads the usage."""

from __future__ import annotations

import json

import pytest

from usage.gateway.views import StreamMeter


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
    sieve = StreamMeter(hide_usage=True)
    out = b"".join(sieve.feed(stream[i : i + cut]) for i in range(0, len(stream), cut))
    out += sieve.flush()
    assert out == kept[0] + kept[1] + done
    assert sieve.usage == USAGE["usage"] and sieve.chars == len("Hi")


def test_without_hiding_the_bytes_pass_as_they_arrive() -> None:
    meter = StreamMeter()
    stream = _event(CONTENT) + _event(USAGE)
    assert meter.feed(stream[:7]) == stream[:7]
    assert meter.feed(stream[7:]) == stream[7:]
    assert meter.flush() == b""
    assert meter.usage == USAGE["usage"]


def test_complete_events_pass_at_once_and_an_unfinished_one_waits() -> None:
    sieve = StreamMeter(hide_usage=True)
    first = _event(CONTENT)
    assert sieve.feed(first + first[:10]) == first
    assert sieve.feed(first[10:]) == first
    assert sieve.flush() == b""


def test_a_stream_cut_inside_the_usage_event_drops_it_at_the_end() -> None:
    sieve = StreamMeter(hide_usage=True)
    usage = _event(USAGE)
    assert sieve.feed(usage[:-2]) == b""
    assert sieve.flush() == b""
