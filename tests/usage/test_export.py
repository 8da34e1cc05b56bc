"""The usage export streams: chunk by chunk, in both formatting paths, and under ASGI
through an asynchronous iterator (a sync one would be read whole before sending)."""

from __future__ import annotations

import asyncio
import csv
import io
import warnings
from typing import Any

import pytest
from django.db import connection

from accounts.models import ApiToken, User
from config.asgi import application
from tests.helpers import credit
from tests.usage.conftest import make_token
from usage import pricing, services
from usage.export import HEADERS, UsageExport
from usage.models import UsageRecord
from usage.selectors import usage_record_list
from wallet.models import Wallet


def make_records(token: ApiToken, count: int) -> None:
    for i in range(count):
        services.usage_record_create_oneshot(
            token=token,
            model="test-chat" if i % 3 else "test-search",
            request_id=f"req-{i}",
            endpoint="chat.completions",
            report=services.UsageReport(
                usage=pricing.Usage(input_tokens=100 + i, cached_input_tokens=i, output_tokens=7),
                status="failed" if i % 5 == 0 else "succeeded",
                error='upstream, "timeout"\nretried' if i % 5 == 0 else "",
                metadata={"region": "eu", "tools": ["a", "b"], "retries": i % 2},
            ),
        )


@pytest.fixture
def exporter(user: User, prices) -> ApiToken:  # type: ignore[no-untyped-def]
    credit(Wallet.objects.get(user=user), "100")
    token, _ = make_token(user)
    return token


def parse(chunks: list[bytes]) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(chunks).decode())))


@pytest.mark.django_db
@pytest.mark.parametrize("use_copy", [True, False])
def test_export_yields_bounded_chunks(exporter: ApiToken, settings, use_copy: bool) -> None:  # type: ignore[no-untyped-def]
    settings.USAGE_EXPORT_COPY = use_copy
    make_records(exporter, 60)
    records = usage_record_list(user=exporter.user, wallet_id=exporter.wallet_id)
    chunks = list(UsageExport(records, chunk_bytes=2048).chunks())
    assert len(chunks) > 5
    longest_row = max(len(line) for line in b"".join(chunks).splitlines()) + 1
    assert all(len(chunk) < 2048 + longest_row for chunk in chunks)
    rows = parse(chunks)
    assert rows[0] == HEADERS
    assert [int(r[0]) for r in rows[1:]] == sorted(records.values_list("id", flat=True))


@pytest.mark.django_db
def test_copy_and_python_paths_write_the_same_csv(exporter: ApiToken, settings) -> None:  # type: ignore[no-untyped-def]
    make_records(exporter, 12)
    records = usage_record_list(user=exporter.user, wallet_id=exporter.wallet_id)
    settings.USAGE_EXPORT_COPY = True
    by_copy = parse(list(UsageExport(records).chunks()))
    settings.USAGE_EXPORT_COPY = False
    by_python = parse(list(UsageExport(records).chunks()))
    assert by_copy == by_python
    assert len(by_copy) == 13
    failed = next(r for r in by_copy[1:] if r[HEADERS.index("status")] == "failed")
    assert failed[HEADERS.index("error")] == 'upstream, "timeout"\nretried'


@pytest.mark.django_db
def test_an_abandoned_export_leaves_the_connection_usable(exporter: ApiToken) -> None:
    make_records(exporter, 30)
    records = usage_record_list(user=exporter.user, wallet_id=exporter.wallet_id)
    stream = UsageExport(records, chunk_bytes=512).chunks()
    next(stream)
    stream.close()  # the client went away mid-export
    assert UsageRecord.objects.count() == 30


def _asgi_get(path: str, query: str, secret: str) -> tuple[int, dict[bytes, bytes], list[bytes]]:
    """One GET through the production ASGI application, as uvicorn would send it."""
    return _asgi_get_plain(path, query, [(b"authorization", f"Bearer {secret}".encode())])


def asgi_get_scope(
    path: str, query: str = "", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"localhost"), *(headers or [])],
        "client": ("127.0.0.1", 40000),
        "server": ("localhost", 80),
    }


def _asgi_get_plain(
    path: str, query: str = "", headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[bytes, bytes], list[bytes]]:
    scope = asgi_get_scope(path, query, headers)
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        body_sent = False
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await never.wait()  # the client stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await application(scope, receive, send)

    asyncio.run(run())
    start = sent[0]
    bodies = [m["body"] for m in sent[1:] if m.get("body")]
    return start["status"], dict(start["headers"]), bodies


@pytest.mark.django_db(transaction=True)
def test_export_under_asgi_streams_through_an_async_iterator(user: User, settings) -> None:  # type: ignore[no-untyped-def]
    settings.USAGE_EXPORT_CHUNK_BYTES = 1024
    services.model_price_create(
        model="test-chat", display_name="c", provider="t", input_usd_per_mtok="1"
    )
    services.model_price_create(
        model="test-search", display_name="s", provider="t", input_usd_per_mtok="1"
    )
    credit(Wallet.objects.get(user=user), "10")
    token, secret = make_token(user)
    make_records(token, 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, headers, bodies = _asgi_get("/api/v1/usage/export", "status=succeeded", secret)
    connection.close()
    assert status == 200
    assert headers[b"Content-Type"] == b"text/csv; charset=utf-8"
    assert b"X-Credits-Remaining" in headers
    # Django warns (and buffers the whole body) when an ASGI response has a sync iterator.
    assert not [w for w in caught if "synchronous iterators" in str(w.message)]
    assert len(bodies) > 3 and all(len(b) < 2 * 1024 for b in bodies)
    rows = parse(bodies)
    assert rows[0] == HEADERS
    assert len(rows) - 1 == UsageRecord.objects.filter(status="succeeded").count() == 32
