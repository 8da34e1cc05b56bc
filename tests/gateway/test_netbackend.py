"""The asyncio-native network backend under httpcore: plain and TLS upstreams, keep-alive
reuse, a server-side close of an idle connection, and errors httpx understands."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import httpcore
import pytest
import uvicorn

from tests.gateway.fake_upstream import FakeUpstream, ServerThread
from usage.gateway.netbackend import AsyncioBackend


def _pool(ssl_context: ssl.SSLContext | None = None) -> httpcore.AsyncConnectionPool:
    return httpcore.AsyncConnectionPool(
        ssl_context=ssl_context, network_backend=AsyncioBackend(), max_connections=4
    )


async def _models(pool: httpcore.AsyncConnectionPool, url: str) -> int:
    response = await pool.request("GET", f"{url}/v1/models")
    return response.status


def test_plain_http_reuses_the_connection() -> None:
    server = ServerThread(FakeUpstream()).start()
    try:

        async def calls() -> tuple[list[int], int]:
            async with _pool() as pool:
                statuses = [await _models(pool, server.url) for _ in range(3)]
                return statuses, len(pool.connections)

        statuses, connections = asyncio.run(calls())
    finally:
        server.stop()
    assert statuses == [200, 200, 200] and connections == 1


def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    fake = FakeUpstream()
    server = ServerThread(fake)
    server.server.config.timeout_keep_alive = 0.2  # type: ignore[assignment]
    server.start()
    try:

        async def calls() -> list[int]:
            async with _pool() as pool:
                first = await _models(pool, server.url)
                await asyncio.sleep(0.6)  # the server closes the idle connection
                return [first, await _models(pool, server.url)]

        assert asyncio.run(calls()) == [200, 200]
    finally:
        server.stop()


def test_tls_upstream(tmp_path: Path) -> None:
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
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{server.port}"
        assert asyncio.run(_with_pool(trusted, url)) == 200
        with pytest.raises(httpcore.ConnectError):
            asyncio.run(_with_pool(ssl.create_default_context(), url))  # untrusted
    finally:
        server.stop()


async def _with_pool(context: ssl.SSLContext, url: str) -> int:
    async with _pool(context) as pool:
        return await _models(pool, url)


def test_connection_refused_and_read_timeout_are_httpcore_errors() -> None:
    async def refused() -> None:
        async with _pool() as pool:
            await _models(pool, "http://127.0.0.1:9")

    with pytest.raises(httpcore.ConnectError):
        asyncio.run(refused())

    fake = FakeUpstream(mode="stall", stall_seconds=2)
    server = ServerThread(fake).start()
    try:

        async def stalled() -> None:
            async with _pool() as pool:
                await pool.request(
                    "GET", f"{server.url}/v1/models", extensions={"timeout": {"read": 0.2}}
                )

        with pytest.raises(httpcore.ReadTimeout):
            asyncio.run(stalled())
    finally:
        server.stop()
