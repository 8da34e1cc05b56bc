"""The upstream client (``usage.gateway.upstream``, on aiohttp) against real servers:
keep-alive reuse, an idle connection the server closed, TLS, and how each failure is
told apart (refused, 5xx, read timeout, a stream cut off)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.gateway.fake_upstream import FakeUpstream, ServerThread
from usage.channels import Channel
from usage.gateway import upstream
from usage.gateway.errors import UpstreamTimeout, UpstreamUnavailable

BODY = {"model": "test-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def fake() -> Iterator[tuple[FakeUpstream, ServerThread]]:
    app = FakeUpstream()
    server = ServerThread(app).start()
    yield app, server
    server.stop()


def _channel(url: str, name: str = "up") -> Channel:
    return Channel(name, f"{url}/v1", "sk-test-key", {"test-chat": "up/chat"})


async def _call(*channels: Channel, stream: bool = False) -> upstream.Upstream:
    return await upstream.send(
        channels=list(channels),
        path="/chat/completions",
        body=dict(BODY, stream=True) if stream else BODY,
        stream=stream,
    )


def test_calls_reuse_one_connection_and_send_only_our_headers(
    fake: tuple[FakeUpstream, ServerThread],
) -> None:
    app, server = fake

    async def three() -> tuple[list[int], int]:
        answers = [await _call(_channel(server.url)) for _ in range(3)]
        connector = upstream.session().connector
        assert connector is not None
        opened = len(connector._conns.get(next(iter(connector._conns)), []))  # idle pool
        await upstream.session().close()
        return [a.response.status_code for a in answers], opened

    statuses, idle = asyncio.run(three())
    assert statuses == [200, 200, 200] and idle == 1
    sent = app.requests[0]
    assert sent["body"]["model"] == "up/chat"
    assert sent["headers"]["authorization"] == "Bearer sk-test-key"
    assert "user-agent" not in sent["headers"] and "accept-encoding" not in sent["headers"]


def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    server = ServerThread(FakeUpstream())
    server.server.config.timeout_keep_alive = 0.2  # type: ignore[assignment]
    server.start()
    try:

        async def calls() -> list[int]:
            first = await _call(_channel(server.url))
            await asyncio.sleep(0.6)  # the server closes the idle connection
            second = await _call(_channel(server.url))
            await upstream.session().close()
            return [first.response.status_code, second.response.status_code]

        assert asyncio.run(calls()) == [200, 200]
    finally:
        server.stop()


def test_tls_upstream_trusted_and_not(tmp_path: Path, settings: Any) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = ServerThread(FakeUpstream())
    server.server.config = uvicorn.Config(
        server.server.config.app,
        lifespan="off",
        log_level="critical",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server.start()
    url = f"https://127.0.0.1:{server.port}"

    async def call() -> int:
        try:
            return (await _call(_channel(url))).response.status_code
        finally:
            await upstream.session().close()

    try:
        with pytest.raises(UpstreamUnavailable):
            asyncio.run(call())  # a certificate nobody vouches for
        settings.GATEWAY_CA_BUNDLE = str(cert)  # now trusted
        assert asyncio.run(call()) == 200
    finally:
        server.stop()


def test_refused_and_5xx_fail_over_and_all_failing_is_unavailable(
    fake: tuple[FakeUpstream, ServerThread],
) -> None:
    _, server = fake
    failing = FakeUpstream(mode="fail500")
    second = ServerThread(failing).start()
    try:

        async def calls() -> tuple[upstream.Upstream, BaseException]:
            refused = Channel("refused", "http://127.0.0.1:9/v1", "")
            answer = await _call(refused, _channel(second.url, "500"), _channel(server.url))
            await answer.response.aclose()
            try:
                await _call(refused, _channel(second.url, "500"))
            except UpstreamUnavailable as exc:
                error: BaseException = exc
            await upstream.session().close()
            return answer, error

        answer, error = asyncio.run(calls())
    finally:
        second.stop()
    assert (answer.channel.name, answer.failovers) == ("up", 2)
    assert isinstance(error, UpstreamUnavailable) and not isinstance(error, UpstreamTimeout)


def test_a_stall_is_a_timeout_and_a_cut_stream_is_broken(
    fake: tuple[FakeUpstream, ServerThread], settings: Any
) -> None:
    app, server = fake
    settings.GATEWAY_READ_TIMEOUT = 0.3
    app.mode, app.stall_seconds = "stall", 2

    async def stalled() -> None:
        try:
            await _call(_channel(server.url))
        finally:
            await upstream.session().close()

    with pytest.raises(UpstreamTimeout):
        asyncio.run(stalled())

    app.mode = "cut"

    async def cut() -> list[bytes]:
        answer = await _call(_channel(server.url), stream=True)
        got: list[bytes] = []
        try:
            async for chunk in answer.response.aiter_bytes():
                got.append(chunk)
        finally:
            await answer.response.aclose()
            await upstream.session().close()
        return got

    with pytest.raises(upstream.StreamBroken):
        asyncio.run(cut())


def test_the_servers_lifespan_closes_the_upstream_connections() -> None:
    from config.asgi import application

    async def serve() -> tuple[bool, bool, list[str]]:
        shared = upstream.session()
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[str] = []

        async def receive() -> dict[str, str]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])

        await application({"type": "lifespan"}, receive, send)
        return shared.closed, asyncio.get_running_loop() in upstream._sessions, sent

    closed, kept, sent = asyncio.run(serve())
    assert closed and not kept  # a later call opens a new session
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
