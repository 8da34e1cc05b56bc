"""The fast path's hop to a request thread (``config.asgi._RequestThread``)."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from config.asgi import _RequestThread

_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


def test_a_call_runs_on_the_thread_in_a_copy_of_the_callers_context() -> None:
    async def main() -> tuple[str, str, str]:
        thread = _RequestThread()
        _seen.set("caller's")

        def work() -> tuple[str, str]:
            value = _seen.get()
            _seen.set("changed in the thread")
            return threading.current_thread().name, value

        name, value = await thread.call(work)
        return name, value, _seen.get()

    name, value, after = asyncio.run(main())
    assert name == "request-fast"
    assert value == "caller's"
    assert after == "caller's"  # the copy changed, not the caller's context


def test_an_exception_reaches_the_caller_and_the_thread_goes_on() -> None:
    async def main() -> int:
        thread = _RequestThread()

        def fail() -> None:
            raise LookupError("boom")

        with pytest.raises(LookupError, match="boom"):
            await thread.call(fail)
        return await thread.call(lambda: 7)

    assert asyncio.run(main()) == 7


def test_a_cancelled_caller_does_not_stop_the_thread() -> None:
    async def main() -> int:
        thread = _RequestThread()
        started, release = threading.Event(), threading.Event()

        def slow() -> int:
            started.set()
            release.wait(5)
            return 1

        waiting = asyncio.ensure_future(thread.call(slow))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        waiting.cancel()
        release.set()
        # calls run one at a time: the next one waits for the cancelled one to finish
        return await thread.call(lambda: 2)

    assert asyncio.run(main()) == 2
