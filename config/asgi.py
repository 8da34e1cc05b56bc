import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.urls import set_urlconf

from config import after_response

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

GATEWAY_PREFIX = "/v1/"


class SyncStackASGIHandler(ASGIHandler):
    """Django's ASGI handler, with the middleware stack run synchronously in one hop.

    Django runs each sync-and-async-capable middleware (all of its own) in async mode under
    ASGI, crossing between the event loop and the request's thread twice per middleware,
    and once more for a sync view. This platform's views are synchronous (DRF), so the
    whole stack and the view run in the request's thread in one call instead: several
    times less overhead per request. Async views still work: Django calls them through
    ``async_to_sync`` on the event loop, and streaming responses are streamed there.

    Each request still gets a thread of its own for its synchronous work (Django's
    ``ThreadSensitiveContext`` per request), but from a pool of idle single-thread
    executors instead of a new thread started and joined for every request.

    Work a view defers with ``config.after_response.defer`` runs once the response is
    complete, in the request's thread-sensitive context, before its thread is reused.
    """

    def __init__(self) -> None:
        super().__init__()
        self._idle_executors: list[ThreadPoolExecutor] = []

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        handler: Any = self
        handler._middleware_chain = sync_to_async(handler._middleware_chain, thread_sensitive=True)
        self._gateway_chain = cast(
            Callable[[HttpRequest], Awaitable[HttpResponseBase]],
            convert_exception_to_response(self._gateway_view),
        )

    async def _gateway_view(self, request: HttpRequest) -> HttpResponseBase:
        match = self.resolve_request(request)
        response: HttpResponseBase = await match.func(request, *match.args, **match.kwargs)
        return response

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        """The OpenAI-compatible gateway (``/v1/``) skips the middleware stack: its async
        views run on the event loop directly (no hop to a thread and back). They use no
        session, cookie, CSRF token or message, authenticate their own bearer tokens, and
        render every error, and ``X-Credits-Remaining``, themselves."""
        if not request.path_info.startswith(GATEWAY_PREFIX):
            return await super().get_response_async(request)
        set_urlconf(settings.ROOT_URLCONF)
        response = await self._gateway_chain(request)
        cast(Any, response)._resource_closers.append(request.close)
        return response

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # Only the event loop's thread touches the list, so pop/append need no lock.
        executor = (
            self._idle_executors.pop()
            if self._idle_executors
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")
        )
        deferred = after_response.begin()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
                # The response is complete (the connection may already serve the next
                # request); finish the request's own bookkeeping in its thread.
                await after_response.run(deferred)
        finally:
            self._idle_executors.append(executor)


django.setup(set_prefix=False)  # what get_asgi_application() does before its handler
application = SyncStackASGIHandler()
