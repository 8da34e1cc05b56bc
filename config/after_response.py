"""Work that runs after a response has been sent, inside the same request.

The production ASGI handler (``config/asgi.py``) collects such work per request and runs it
once the response is complete, still within the request's thread-sensitive context (so
synchronous database work uses the request's thread) and within the ASGI call (so a
graceful shutdown of uvicorn waits for it). The client does not wait for it: the next
request on the same connection starts as soon as the response is complete.

The gateway uses it to settle a call (capture and record) after the answer went out.
Under any other server there is no collector and ``defer`` returns False: the caller then
does the work before responding.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token

logger = logging.getLogger(__name__)

Work = Callable[[], Awaitable[object]]

_pending: ContextVar[list[Work] | None] = ContextVar("after_response", default=None)


def defer(work: Work) -> bool:
    """Run ``work`` after this request's response; False if the server cannot."""
    pending = _pending.get()
    if pending is None:
        return False
    pending.append(work)
    return True


def begin() -> Token[list[Work] | None]:
    return _pending.set([])


async def run(token: Token[list[Work] | None]) -> None:
    """Run the work deferred during the request (in order; a failure is logged and does
    not stop the rest), then stop collecting."""
    pending = _pending.get() or []
    try:
        while pending:
            work = pending.pop(0)
            try:
                await work()
            except Exception:
                logger.exception("work deferred after a response failed")
    finally:
        _pending.reset(token)
