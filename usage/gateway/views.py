"""The OpenAI-compatible gateway: ``POST /v1/chat/completions`` (streaming or not),
``POST /v1/embeddings`` and ``GET /v1/models``.

Async views on the event loop. A call is: parse; ``admit`` (token, caps, hold) in one
database hop; forward with the shared pooled client (``upstream.send``, failing over
between channels while nothing reached the client); relay the answer, streams chunk by
chunk as they arrive; ``settle`` (capture, or release and record a failure) in one more
hop. Every response to a token holder carries ``X-Credits-Remaining``; for a stream it is
the balance with the call's hold taken, as the headers leave before the charge is known.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import APIException

from accounts.authentication import client_ip
from accounts.middleware import HEADER as CREDITS_REMAINING
from config import after_response
from config.errors import ApplicationError
from usage.gateway import handoff, metering, upstream
from usage.gateway.errors import (
    InvalidRequest,
    MethodNotAllowed,
    MissingApiKey,
    UpstreamUnavailable,
    error_response,
    stream_error_event,
    upstream_refusal,
)
from usage.models import UsageRecord

logger = logging.getLogger(__name__)

_admit = sync_to_async(metering.admit)
_settle = sync_to_async(metering.settle)
_settle_and_release = sync_to_async(metering.settle_and_release)
_model_list = sync_to_async(metering.model_list)
_token_credits = sync_to_async(metering.token_credits)


def _bearer(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise MissingApiKey()
    return secret.strip()


def _method_not_allowed(method: str) -> JsonResponse:
    response = error_response(MethodNotAllowed(f"Use {method} for this endpoint."))
    response["Allow"] = method
    return response


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return await _proxy(request, metering.CHAT)


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    return await _proxy(request, metering.EMBEDDINGS)


async def models(request: HttpRequest) -> HttpResponseBase:
    if request.method != "GET":
        return _method_not_allowed("GET")
    try:
        data, remaining = await _model_list(secret=_bearer(request), client_ip=client_ip(request))
    except metering.Refused as refused:
        return error_response(refused.error, credits_remaining=refused.credits_remaining)
    except (ApplicationError, APIException) as exc:
        return error_response(exc)
    response = JsonResponse({"object": "list", "data": data})
    response[CREDITS_REMAINING] = remaining
    return response


async def _proxy(request: HttpRequest, endpoint: str) -> HttpResponseBase:
    if request.method != "POST":
        return _method_not_allowed("POST")
    started_at = timezone.now()
    try:
        secret = _bearer(request)
        try:
            call = metering.call_parse(endpoint=endpoint, raw=request.body)
        except InvalidRequest as invalid:
            # The token is checked first (a bad token is 401 whatever the body), and its
            # holder gets X-Credits-Remaining on this answer too.
            remaining = await _token_credits(secret=secret, client_ip=client_ip(request))
            return error_response(invalid, credits_remaining=remaining)
        admission = await _admit(secret=secret, client_ip=client_ip(request), call=call)
    except metering.Refused as refused:
        return error_response(refused.error, credits_remaining=refused.credits_remaining)
    except (ApplicationError, APIException) as exc:
        return error_response(exc)

    outcome = metering.Outcome(started_at=started_at, stream=call.stream)
    try:
        answer = await upstream.send(
            channels=admission.channels, path=call.path, body=call.body, stream=call.stream
        )
        outcome.channel, outcome.failovers = answer.channel.name, answer.failovers
        if answer.response.status_code >= 400:
            await answer.response.aread()
            await answer.response.aclose()
            raise upstream_refusal(answer.response.status_code, answer.response.content)
    except BaseException as exc:
        return await _failed(admission, outcome, exc)
    if call.stream:
        return _stream_response(admission, outcome, answer)
    return await _complete(admission, outcome, answer.response)


async def _failed(
    admission: metering.Admission, outcome: metering.Outcome, exc: BaseException
) -> JsonResponse:
    """Nothing reached the client: release the hold and record the failure, 0 charged."""
    cancelled = isinstance(exc, asyncio.CancelledError)
    outcome.status = UsageRecord.Status.CANCELLED if cancelled else UsageRecord.Status.FAILED
    outcome.error = str(exc) or type(exc).__name__
    outcome.finished_at = timezone.now()
    remaining = await asyncio.shield(_settle(admission=admission, outcome=outcome, produced=False))
    if not isinstance(exc, Exception):
        raise exc
    if not isinstance(exc, (ApplicationError, APIException)):
        logger.exception("gateway call failed", exc_info=exc)
    return error_response(exc, credits_remaining=remaining)


async def _settle_after_response(
    admission: metering.Admission, outcome: metering.Outcome, *, produced: bool
) -> bool:
    """Settle once the answer is out (the client does not wait for the capture; the hold
    already bounds what the call can spend): handed over to a settler process when one
    runs, else in this one. False when the server cannot defer work: the caller settles
    before answering."""

    async def work() -> None:
        if await handoff.hand_over(admission=admission, outcome=outcome, produced=produced):
            return
        await _settle_and_release(admission=admission, outcome=outcome, produced=produced)

    return after_response.defer(work)


async def _complete(
    admission: metering.Admission, outcome: metering.Outcome, response: upstream.Response
) -> HttpResponse:
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    if isinstance(data, dict):
        outcome.usage = data.get("usage")
        messages = [
            choice["message"]
            for choice in data.get("choices") or ()
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict)
        ]
        outcome.output_chars = sum(len(message.get("content") or "") for message in messages)
        if admission.log_content:
            outcome.response_text = "".join(
                m["content"] for m in messages if isinstance(m.get("content"), str)
            )
            calls = [c for m in messages for c in m.get("tool_calls") or ()]
            outcome.tool_calls = calls or None
    outcome.finished_at = timezone.now()
    if await _settle_after_response(admission, outcome, produced=True):
        remaining = metering.credits_projected(admission=admission, outcome=outcome)
    else:
        remaining = await _settle(admission=admission, outcome=outcome, produced=True)
    reply = HttpResponse(
        response.content,
        status=response.status_code,
        content_type=response.headers.get("content-type", "application/json"),
    )
    reply[CREDITS_REMAINING] = remaining
    reply["X-Request-Id"] = admission.authorization.request_id
    return reply


# The end of a server-sent event: a blank line, whichever line ending the upstream uses.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class StreamMeter:
    """Reads the SSE stream as it passes, each event once: the usage chunk, if any, and
    the characters of text produced (for the estimate when there is none).

    ``hide_usage``: drop the usage-only event (no choices, a ``usage`` object) from what is
    relayed: we ask the upstream for it to charge the call, but a client that did not ask
    may not expect an event without choices. Other events pass unchanged, each as soon as
    it is complete; without ``hide_usage`` the bytes pass exactly as they arrive."""

    def __init__(self, *, keep: int = 0, hide_usage: bool = False) -> None:
        self._pending = b""
        self._hide_usage = hide_usage
        self.usage: Any = None
        self.chars = 0
        # Content logging: keep up to ``keep`` characters of text, and the tool calls.
        self._keep = keep
        self._text: list[str] = []
        self._kept = 0
        self._tool_calls: dict[int, dict[str, Any]] = {}

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def tool_calls(self) -> list[dict[str, Any]] | None:
        return [self._tool_calls[i] for i in sorted(self._tool_calls)] or None

    def _keep_text(self, text: str) -> None:
        if self._kept < self._keep:
            self._text.append(text[: self._keep - self._kept])
            self._kept += min(len(text), self._keep - self._kept)

    def _keep_tool_call(self, delta: dict[str, Any]) -> None:
        index = delta.get("index", len(self._tool_calls))
        call = self._tool_calls.setdefault(
            index if isinstance(index, int) else 0, {"function": {"name": "", "arguments": ""}}
        )
        for key in ("id", "type"):
            if isinstance(delta.get(key), str):
                call[key] = delta[key]
        function = delta.get("function")
        if isinstance(function, dict):
            for key in ("name", "arguments"):
                part = function.get(key)
                if isinstance(part, str) and len(call["function"][key]) < self._keep:
                    call["function"][key] += part

    def feed(self, chunk: bytes) -> bytes:
        """Meter ``chunk``; returns what to relay of it."""
        data, start, passed = self._pending + chunk, 0, []
        for end in _EVENT_END.finditer(data):
            event = data[start : end.end()]
            start = end.end()
            if not self._read(event) or not self._hide_usage:
                passed.append(event)
        self._pending = data[start:]
        return b"".join(passed) if self._hide_usage else chunk

    def flush(self) -> bytes:
        """At the end of the stream: meter an unfinished last event; returns what is
        still to relay (nothing unless events are being held back)."""
        rest, self._pending = self._pending, b""
        usage_only = self._read(rest)
        return rest if self._hide_usage and not usage_only else b""

    def _read(self, event: bytes) -> bool:
        """Meter one event; True if it is the usage-only event."""
        usage_only = False
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            try:
                data = json.loads(payload)
            except ValueError:
                continue
            if isinstance(data, dict):
                self._event(data)
                usage_only = not data.get("choices") and isinstance(data.get("usage"), dict)
        return usage_only

    def _event(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        for choice in event.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            for key in ("content", "reasoning", "reasoning_content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str):
                    self.chars += len(text)
                    if self._keep and key == "content":
                        self._keep_text(text)
            for tool_call in delta.get("tool_calls") or ():
                function = tool_call.get("function") if isinstance(tool_call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    self.chars += len(function["arguments"])
                if self._keep and isinstance(tool_call, dict):
                    self._keep_tool_call(tool_call)


class MeteredStream(StreamingHttpResponse):
    """Closes its relay as soon as the server stops reading it (the client left), so the
    relay settles then, not whenever the garbage collector finalizes it."""

    def __init__(self, relay: Any, **kwargs: Any) -> None:
        super().__init__(relay, **kwargs)
        self._relay = relay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._relay:
                yield part
        finally:
            await self._relay.aclose()


def _stream_response(
    admission: metering.Admission, outcome: metering.Outcome, answer: upstream.Upstream
) -> MeteredStream:
    async def if_never_relayed() -> None:
        # The client left before the server began sending the body: the relay never ran.
        if not outcome.relayed:
            await answer.response.aclose()
            outcome.status = UsageRecord.Status.CANCELLED
            outcome.error = "The client disconnected before the answer was relayed."
            outcome.finished_at = timezone.now()
            await _settle_and_release(admission=admission, outcome=outcome, produced=False)

    after_response.defer(if_never_relayed)
    response = MeteredStream(_relay(admission, outcome, answer), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response[CREDITS_REMAINING] = admission.credits_remaining
    response["X-Request-Id"] = admission.authorization.request_id
    return response


async def _relay(
    admission: metering.Admission, outcome: metering.Outcome, answer: upstream.Upstream
) -> AsyncIterator[bytes]:
    """Pass the upstream's SSE bytes on as they arrive, metering them; when the stream
    ends, breaks, or the client leaves, stop reading upstream and charge what was
    produced."""
    # One character past the limit shows the stored text was cut.
    meter = StreamMeter(
        keep=settings.CONTENT_LOG_MAX_CHARS + 1 if admission.log_content else 0,
        hide_usage=not admission.call.client_wants_usage,
    )
    outcome.relayed = True
    try:
        async for chunk in answer.response.aiter_bytes():
            if passed := meter.feed(chunk):
                yield passed
        if rest := meter.flush():
            yield rest
    except upstream.StreamBroken as exc:
        outcome.status = UsageRecord.Status.FAILED
        outcome.error = f"The upstream stream broke off ({exc})."
        yield stream_error_event(UpstreamUnavailable(outcome.error))
    except (asyncio.CancelledError, GeneratorExit):
        outcome.status = UsageRecord.Status.CANCELLED
        outcome.error = "The client disconnected."
        raise
    finally:
        meter.flush()  # a stream cut off or left mid-event: meter what did arrive
        outcome.usage, outcome.output_chars = meter.usage, meter.chars
        if admission.log_content:
            outcome.response_text, outcome.tool_calls = meter.text, meter.tool_calls
        outcome.finished_at = timezone.now()
        await answer.response.aclose()
        if not await _settle_after_response(admission, outcome, produced=True):
            try:
                await asyncio.shield(_settle(admission=admission, outcome=outcome, produced=True))
            except Exception:
                logger.exception("settling a streamed call failed")
