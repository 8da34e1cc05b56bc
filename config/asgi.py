import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")


class SyncStackASGIHandler(ASGIHandler):
    """Django's ASGI handler, serving each request's synchronous work in one thread hop.

    Django's own handler crosses between the event loop and the request's thread several
    times per request: for the request-started signal, for each sync-and-async-capable
    middleware (all of Django's), for a sync view, and for closing the response. This
    platform's views are synchronous (DRF), so here one hop does it all: the signal, the
    request object, the whole middleware stack and view (``BaseHandler.get_response``), and,
    for an ordinary response, closing it (the request-finished signal); the event loop then
    only sends the bytes. Streaming responses (exports, the gateway's server-sent events)
    are sent as Django sends them, watching for the client disconnecting, and closed after.
    Async views still work: Django calls them through ``async_to_sync`` on the event loop.

    Each request still gets a thread of its own for its synchronous work (Django's
    ``ThreadSensitiveContext`` per request), but from a pool of idle single-thread
    executors instead of a new thread started and joined for every request.
    """

    def __init__(self) -> None:
        super().__init__()
        self._idle_executors: list[ThreadPoolExecutor] = []

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # Only the event loop's thread touches the list, so pop/append need no lock.
        executor = (
            self._idle_executors.pop()
            if self._idle_executors
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")
        )
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self._idle_executors.append(executor)

    def _respond(self, scope: Any, body_file: Any) -> HttpResponseBase:
        """Everything synchronous about one request, in the request's thread."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        assert response is not None  # create_request returns a request or an error response
        if not response.streaming:
            response.close()  # the body is in memory; this fires request_finished
        return response

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            response = await sync_to_async(self._respond, thread_sensitive=True)(scope, body_file)
            if not response.streaming:
                await self.send_response(response, send)
                return
            await self._stream(response, receive, send)
        finally:
            body_file.close()

    async def _stream(self, response: HttpResponseBase, receive: Any, send: Any) -> None:
        """Send a streaming response, stopping it if the client goes away (as Django does)."""
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        sender = asyncio.create_task(self.send_response(response, send))
        try:
            await asyncio.wait([listener, sender], return_when=asyncio.FIRST_COMPLETED)
            for task in (listener, sender):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RequestAborted):
                    await task
        finally:
            await sync_to_async(response.close, thread_sensitive=True)()


django.setup(set_prefix=False)  # what get_asgi_application() does before its handler
application = SyncStackASGIHandler()
