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
