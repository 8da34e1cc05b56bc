"""The production ASGI application runs the middleware stack synchronously in one hop;
async views (the gateway's) and async streaming responses must still work through it."""

from __future__ import annotations

import pytest

from tests.usage.test_export import _asgi_get_plain

pytestmark = pytest.mark.django_db(transaction=True)


def test_async_views_and_async_streams_work(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ROOT_URLCONF = "tests.usage.asgi_urls"
    status, _, bodies = _asgi_get_plain("/json")
    assert status == 200 and b"".join(bodies) == b'{"async": true}'
    status, _, bodies = _asgi_get_plain("/stream")
    assert status == 200 and bodies == [b"part 0\n", b"part 1\n", b"part 2\n"]


def test_a_client_that_leaves_mid_stream_stops_the_stream(settings) -> None:  # type: ignore[no-untyped-def]
    """The gateway relies on this: when the client disconnects, the response's iterator is
    closed (so the view stops reading upstream and settles what was produced)."""
    import asyncio
    from typing import Any

    from config.asgi import application
    from tests.usage import asgi_urls
    from tests.usage.test_export import asgi_get_scope

    settings.ROOT_URLCONF = "tests.usage.asgi_urls"
    asgi_urls.endless_events.clear()
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        requested = False
        left = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if len([m for m in sent if m.get("body")]) == 3:
                left.set()  # the client goes away after three parts

        scope = asgi_get_scope("/endless")
        await asyncio.wait_for(application(scope, receive, send), timeout=10)

    asyncio.run(run())
    assert sent[0]["status"] == 200
    assert 3 <= len([m for m in sent if m.get("body")]) <= 4
    assert asgi_urls.endless_events == ["closed"]


def test_each_request_finishes_its_database_work(settings) -> None:  # type: ignore[no-untyped-def]
    """request_started and request_finished still fire once per request (one thread hop),
    for ordinary and streaming responses alike."""
    from django.core import signals

    from tests.usage.test_export import _asgi_get_plain

    seen: list[str] = []

    def started(**_: object) -> None:
        seen.append("started")

    def finished(**_: object) -> None:
        seen.append("finished")

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        settings.ROOT_URLCONF = "tests.usage.asgi_urls"
        status, _, _ = _asgi_get_plain("/json")
        status_stream, _, _ = _asgi_get_plain("/stream")
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
    assert (status, status_stream) == (200, 200)
    assert seen == ["started", "finished", "started", "finished"]
