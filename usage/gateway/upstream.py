"""Talking to the upstream channels: one shared aiohttp session per event loop (one per web
process in production) with a pool of keep-alive HTTP/1.1 connections, connect and read
timeouts from the settings, and failover to the next channel while nothing has reached the
client yet.

aiohttp rather than httpx: its HTTP parser is C and its pool has no per-call locks or
cancel shields; measured against the same fake upstream on this machine, a call costs
0.22 ms of CPU against httpx's 0.58 ms one at a time, and 0.09 ms against 0.67 ms with 16
at once.

API keys go only into the ``Authorization`` header of upstream requests; log lines name
the channel, never its key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from django.conf import settings

from usage.channels import Channel
from usage.gateway.errors import UpstreamTimeout, UpstreamUnavailable

logger = logging.getLogger(__name__)

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

# What a broken upstream raises: refused or dropped connections, bad HTTP, a stream cut
# off mid-body (all ``aiohttp.ClientError``), and the connect and read timeouts.
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError)


class StreamBroken(Exception):
    """The upstream's body stopped before its end (a cut connection, a stall past the read
    timeout)."""


def session() -> aiohttp.ClientSession:
    """The shared session of the running event loop (an aiohttp session belongs to the
    loop it was made on; uvicorn has one loop per worker process)."""
    loop = asyncio.get_running_loop()
    shared = _sessions.get(loop)
    if shared is None or shared.closed:
        for old_loop in [old for old in _sessions if old.is_closed()]:
            _sessions.pop(old_loop, None)
        limit = settings.GATEWAY_MAX_CONNECTIONS
        shared = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=limit, limit_per_host=limit, keepalive_timeout=5.0, ssl=_tls()
            ),
            # Only our own headers go upstream; the body is relayed as it comes.
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )
        _sessions[loop] = shared
    return shared


async def close() -> None:
    """Close the running event loop's session and its connections (at server shutdown)."""
    shared = _sessions.pop(asyncio.get_running_loop(), None)
    if shared is not None:
        await shared.close()


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None,
        connect=settings.GATEWAY_CONNECT_TIMEOUT,  # a free connection, then connecting
        sock_read=settings.GATEWAY_READ_TIMEOUT,  # between bytes of the answer
    )


def _tls() -> ssl.SSLContext:
    """Upstream certificates are verified against the system's authorities, plus
    ``GATEWAY_CA_BUNDLE`` when set (an upstream behind a private authority)."""
    context = ssl.create_default_context()
    if settings.GATEWAY_CA_BUNDLE:
        context.load_verify_locations(cafile=settings.GATEWAY_CA_BUNDLE)
    return context


def _headers(channel: Channel, stream: bool) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
    }
    if channel.api_key:
        headers["Authorization"] = f"Bearer {channel.api_key}"
    return headers


class Response:
    """An upstream's answer: status, headers, and the body (read whole, or streamed)."""

    def __init__(self, response: aiohttp.ClientResponse, content: bytes | None = None) -> None:
        self._response = response
        self.status_code = response.status
        self.headers = response.headers
        self.content = content if content is not None else b""

    async def aread(self) -> bytes:
        if not self.content:
            self.content = await self._response.read()
        return self.content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; ``StreamBroken`` if it stops before its end."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except UPSTREAM_ERRORS as exc:
            raise StreamBroken(type(exc).__name__) from exc

    async def aclose(self) -> None:
        """Give the connection back (kept alive when the body was read to its end)."""
        self._response.release()


@dataclass
class Upstream:
    """An upstream's answer that is being relayed: the channel that gave it and how many
    channels failed before it."""

    channel: Channel
    response: Response
    failovers: int


async def send(
    *, channels: list[Channel], path: str, body: dict[str, Any], stream: bool
) -> Upstream:
    """POST ``body`` to the first channel that answers, its model renamed by the channel's
    mapping. A connection error, a timeout or a 5xx moves on to the next channel (nothing
    was sent to the client yet); a 4xx is the upstream's answer and is returned. Raises
    ``UpstreamUnavailable`` / ``UpstreamTimeout`` when every channel failed.

    With ``stream`` the response is returned as soon as its headers arrive (the caller
    relays the body and must close it); otherwise its body is read here.
    """
    client = session()
    last: BaseException | None = None
    failures = 0
    for channel in channels:
        payload = dict(body, model=channel.upstream_model(str(body["model"])))
        try:
            raw = await client.post(
                channel.url(path),
                data=json.dumps(payload, separators=(",", ":")).encode(),
                headers=_headers(channel, stream),
                timeout=_timeout(),
            )
            try:
                response = Response(raw, None if stream else await raw.read())
            finally:
                if not stream:
                    raw.release()
        except UPSTREAM_ERRORS as exc:
            logger.warning("upstream channel %s failed: %s", channel.name, type(exc).__name__)
            last, failures = exc, failures + 1
            continue
        if response.status_code >= 500:
            await response.aclose()
            logger.warning("upstream channel %s answered %s", channel.name, response.status_code)
            last, failures = None, failures + 1
            continue
        return Upstream(channel, response, failures)
    if isinstance(last, TimeoutError) and not isinstance(last, aiohttp.ConnectionTimeoutError):
        raise UpstreamTimeout(channels_tried=failures)
    raise UpstreamUnavailable(channels_tried=failures)
