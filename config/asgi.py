import asyncio
import contextlib
import contextvars
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.urls import set_script_prefix, set_urlconf

from config import after_response

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

GATEWAY_PREFIX = "/v1/"


class _RequestThread:
    """A thread that runs one synchronous call at a time for the event loop, and wakes
    the loop with the outcome: the least a hop can do (an executor's hop also makes a
    concurrent future, a work item and a second future chained to the first, which on
    the metering fast path cost about as much as the hop's thread switch). The call runs
    in a copy of the caller's context, as ``run_in_executor`` callers do."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="request-fast", daemon=True).start()

    def call(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls.put((loop, future, contextvars.copy_context(), function, args))
        return future

    def _run(self) -> None:
        while True:
            loop, future, context, function, args = self._calls.get()
            outcome: tuple[Any, BaseException | None]
            try:
                outcome = (context.run(function, *args), None)
            except BaseException as exc:  # handed to the awaiting request
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, future, *outcome)
            del loop, future, context, function, args, outcome  # hold nothing while idle


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():  # the request was cancelled meanwhile: nobody is waiting
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class SyncStackASGIHandler(ASGIHandler):
    """Django's ASGI handler, serving each request's synchronous work in one thread hop.

    Django's own handler crosses between the event loop and the request's thread several
    times per request: for the request-started signal, for each sync-and-async-capable
    middleware (all of Django's), for a sync view, and for closing the response. This
    platform's views are synchronous (DRF), so here one hop does it all: the signal, the
    request object, the whole middleware stack and view (``BaseHandler.get_response``), and,
    for an ordinary response, closing it (the request-finished signal); the event loop then
    only sends the bytes. Streaming responses (exports) are sent as Django sends them,
    watching for the client disconnecting, and closed after.

    The OpenAI-compatible gateway (``/v1/``) is the exception: its views are async and run
    on the event loop without the middleware stack (see ``get_response_async``), through
    Django's own request handling.

    Each request still gets a thread of its own for its synchronous work (Django's
    ``ThreadSensitiveContext`` per request), but from a pool of idle single-thread
    executors instead of a new thread started and joined for every request.

    Work a view defers with ``config.after_response.defer`` runs once the response is
    complete, in the request's thread-sensitive context, before its thread is reused.
    """

    def __init__(self) -> None:
        super().__init__()
        self._idle_executors: list[ThreadPoolExecutor] = []
        self._fast_threads: list[_RequestThread] = []

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        self._gateway_chain = cast(
            Callable[[HttpRequest], Awaitable[HttpResponseBase]],
            convert_exception_to_response(self._gateway_view),
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        target = fastpath.route(scope)
        if target is not None:
            await self._serve_fast(scope, receive, send, target)
            return
        executor = self._executor()
        deferred = after_response.begin()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
                # The response is complete (the connection may already serve the next
                # request); finish the request's own bookkeeping in its thread.
                await after_response.run(deferred)
        finally:
            self._idle_executors.append(executor)

    def _executor(self) -> ThreadPoolExecutor:
        """An idle single-thread executor (only the event loop's thread touches the list,
        so pop/append need no lock)."""
        if self._idle_executors:
            return self._idle_executors.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    async def _lifespan(self, receive: Any, send: Any) -> None:
        """Nothing to start; at shutdown, close what this process opened on its event loop
        (the gateway's pooled upstream connections, its connections to the settlers' Redis)."""
        from usage.gateway import handoff, upstream  # imports models: once Django is set up

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await upstream.close()
                await handoff.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"].startswith(GATEWAY_PREFIX):
            await super().handle(scope, receive, send)  # -> get_response_async, on the loop
            return
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

    async def _serve_fast(self, scope: Any, receive: Any, send: Any, target: Any) -> None:
        """The metering fast path (``usage.fastpath``): the body (of announced length),
        one hop for everything synchronous, then the bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > target.length:
                break  # more than announced: let the fast path refuse it as malformed
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        # One hop to an idle request thread of the fast path's own: it defers no work,
        # calls nothing asynchronous and uses the thread's own database connection, so
        # Django's thread-sensitive context is not needed around it.
        thread = self._fast_threads.pop() if self._fast_threads else _RequestThread()
        try:
            status, headers, content = await thread.call(
                fastpath.serve, scope, b"".join(chunks), target
            )
        finally:
            self._fast_threads.append(thread)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

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

    async def _gateway_view(self, request: HttpRequest) -> HttpResponseBase:
        match = self.resolve_request(request)
        response: HttpResponseBase = await match.func(request, *match.args, **match.kwargs)
        return response

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        """Django's handler calls this for the gateway only (``handle`` serves everything
        else in one hop). The gateway's async views run on the event loop directly, without
        the middleware stack: they use no session, cookie, CSRF token or message,
        authenticate their own bearer tokens, and render every error, and
        ``X-Credits-Remaining``, themselves."""
        if not request.path_info.startswith(GATEWAY_PREFIX):
            return await sync_to_async(self.get_response, thread_sensitive=True)(request)
        set_urlconf(settings.ROOT_URLCONF)
        response = await self._gateway_chain(request)
        cast(Any, response)._resource_closers.append(request.close)
        return response


django.setup(set_prefix=False)  # what get_asgi_application() does before its handler
from usage import fastpath  # noqa: E402 (reads settings: after the setup)

application = SyncStackASGIHandler()
