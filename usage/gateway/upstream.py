"""Talking to the upstream channels: one shared, pooled httpx transport per event loop (one
per web process in production), HTTP/1.1 keep-alive, connect and read timeouts from the
settings, and failover to the next channel while nothing has reached the client yet.

API keys go only into the ``Authorization`` header of upstream requests; log lines name
the channel, never its key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from django.conf import settings

from usage.channels import Channel
from usage.gateway.errors import UpstreamTimeout, UpstreamUnavailable
from usage.gateway.netbackend import AsyncioBackend

logger = logging.getLogger(__name__)

_transports: dict[asyncio.AbstractEventLoop, httpx.AsyncHTTPTransport] = {}


def transport() -> httpx.AsyncHTTPTransport:
    """The shared connection pool of the running event loop (httpx's pool is bound to the
    loop it first runs on; uvicorn has one loop per worker process).

    Requests go to httpx's transport directly: the client layer on top (cookies, auth
    flows, redirects, event hooks) is nothing a proxy wants, and costs CPU on every call.
    """
    loop = asyncio.get_running_loop()
    shared = _transports.get(loop)
    if shared is None:
        for old_loop in [old for old in _transports if old.is_closed()]:
            _transports.pop(old_loop, None)
        limit = settings.GATEWAY_MAX_CONNECTIONS
        shared = httpx.AsyncHTTPTransport(http1=True, http2=False, retries=0)
        # httpx's transport over httpcore's pool, built here to give it the asyncio-native
        # network backend (httpx has no parameter for it; ``netbackend`` says why).
        shared._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limit,
            max_keepalive_connections=limit,
            keepalive_expiry=5.0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=AsyncioBackend(),
        )
        _transports[loop] = shared
    return shared


def _timeout() -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.GATEWAY_CONNECT_TIMEOUT,
        read=settings.GATEWAY_READ_TIMEOUT,
        write=settings.GATEWAY_READ_TIMEOUT,
        pool=settings.GATEWAY_CONNECT_TIMEOUT,
    )


def _headers(channel: Channel, stream: bool) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
    }
    if channel.api_key:
        headers["Authorization"] = f"Bearer {channel.api_key}"
    return headers


@dataclass
class Upstream:
    """An upstream's answer that is being relayed: the channel that gave it and how many
    channels failed before it."""

    channel: Channel
    response: httpx.Response
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
    pool = transport()
    timeout = {"timeout": _timeout().as_dict()}
    last: Exception | None = None
    failures = 0
    for channel in channels:
        payload = dict(body, model=channel.upstream_model(str(body["model"])))
        request = httpx.Request(
            "POST",
            channel.url(path),
            content=json.dumps(payload, separators=(",", ":")).encode(),
            headers=_headers(channel, stream),
            extensions=timeout,
        )
        try:
            response = await pool.handle_async_request(request)
            if not stream:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except httpx.TransportError as exc:
            logger.warning("upstream channel %s failed: %s", channel.name, type(exc).__name__)
            last, failures = exc, failures + 1
            continue
        if response.status_code >= 500:
            await response.aclose()
            logger.warning("upstream channel %s answered %s", channel.name, response.status_code)
            last, failures = None, failures + 1
            continue
        return Upstream(channel, response, failures)
    if isinstance(last, httpx.TimeoutException) and not isinstance(last, httpx.ConnectTimeout):
        raise UpstreamTimeout(channels_tried=failures)
    raise UpstreamUnavailable(channels_tried=failures)
