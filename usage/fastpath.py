"""The two busiest metering endpoints served without Django's middleware stack and DRF's
request and response machinery: ``POST /api/v1/authorizations`` and
``POST /api/v1/authorizations/{id}/capture`` with a bearer token and a JSON body.

It is DRF's dispatch in miniature, around the same view classes: the same authentication
class authenticates the token and checks the view's scope, the same throttle counts the
request, the view's own ``post`` runs (validation, the service call, the payload), errors
go through the project's exception handler, and the body is rendered by DRF's
``JSONRenderer``. What it leaves out is what these requests do not use: sessions, CSRF
(token requests are exempt), messages, content negotiation (JSON only), URL resolution,
and the middleware chain. The middleware that adds response headers (security headers,
``X-Frame-Options``, ``X-Credits-Remaining``) is run on the response here, the same
classes with the same settings.

Anything else (another method or path, no bearer token, another content type, a query
string, ``SECURE_SSL_REDIRECT`` on) is served by the full stack, unchanged.

Each request is first answered as an attempt that may read its token, the model's price
and the authorization it captures from the process's memory (``config.cached_reads``,
``METERING_CACHE_SIZE``). Such an answer is sent only if a metering function confirmed,
in the statement that wrote, that what was read is current; any other (a refusal, a
replay, a step that cannot check) is dropped, nothing having been written, and the
request is answered again reading from the database (``rechecked`` counts these), keeping
the first attempt's rate-limit verdict so the request is counted once.
``tests/gateway/test_metering_fast_path.py`` sends the same requests both ways and compares
status, headers, bodies and log lines.
"""

from __future__ import annotations

import io
import re
from typing import Any, cast

from django.conf import settings
from django.core import signals
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.functional import cached_property
from django.utils.log import log_response
from rest_framework import exceptions as drf_exceptions
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import ApiTokenAuthentication, TokenRateThrottle
from accounts.middleware import CreditsRemainingMiddleware
from accounts.models import ApiToken
from config import cached_reads
from config.errors import api_exception_handler

_PATH = re.compile(r"^/api/v1/authorizations(?:/(?P<authorization_id>[0-9]+)/capture)?$")


class Route:
    """A request this path serves: the view class and its URL arguments."""

    def __init__(self, view: type[APIView], kwargs: dict[str, Any], length: int) -> None:
        self.view = view
        self.kwargs = kwargs
        self.length = length


def route(scope: dict[str, Any]) -> Route | None:
    """The route for an ASGI request, if this path serves it (decided from the request
    line and headers alone, before anything is read or counted)."""
    if (
        scope["method"] != "POST"
        or scope.get("query_string")
        or not settings.METERING_FAST_PATH
        or settings.SECURE_SSL_REDIRECT  # SecurityMiddleware's redirect is the full stack's
    ):
        return None
    match = _PATH.match(scope["path"])
    if match is None:
        return None
    bearer = content_json = False
    length = -1
    for name, value in scope["headers"]:
        if name == b"authorization":
            bearer = value[:7].lower() == b"bearer "
        elif name == b"content-type":
            content_json = value.split(b";")[0].strip().lower() == b"application/json"
        elif name == b"content-length":
            length = int(value) if value.isdigit() else -1
    # A body of known length within the limit (over it, the full stack answers 413).
    if not (bearer and content_json and 0 <= length <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE):
        return None
    from usage import api  # the views import models: after Django's setup

    captured = match.group("authorization_id")
    if captured is None:
        return Route(api.AuthorizationCreateApi, {}, length)
    return Route(api.AuthorizationCaptureApi, {"authorization_id": int(captured)}, length)


class _Request(ASGIRequest):
    """Django's own request for the scope, with what DRF's ``Request`` adds that the views,
    the authentication class and the throttle read (``data``, ``auth``, ``user``,
    ``parser_context``)."""

    def __init__(self, scope: dict[str, Any], body: bytes, view: APIView) -> None:
        super().__init__(scope, io.BytesIO(body))
        self.parser_context = {"view": view}
        self.auth: ApiToken | None = None
        self.user: Any = None

    @cached_property
    def data(self) -> Any:
        """The JSON body, parsed when the view first reads it (as DRF does: a capture of an
        authorization that does not exist is a 404 whatever its body)."""
        return _PARSER.parse(io.BytesIO(self.body), "application/json", {})


_PARSER = JSONParser()
_RENDERER = JSONRenderer()


def _unused(request: HttpRequest) -> HttpResponseBase:
    raise AssertionError("only the response phase of these middleware runs here")


# The response phase of the full stack's header-adding middleware, innermost first.
_HEADER_MIDDLEWARE = (XFrameOptionsMiddleware(_unused), SecurityMiddleware(_unused))
served = 0  # requests this process answered here (for operators and tests)
rechecked = 0  # of those, answered again reading from the database


class _Verdict:
    """The rate limiter's answer for this request, asked once however often it is
    answered."""

    allowed: bool | None = None
    wait: float | None = None


def serve(
    scope: dict[str, Any], body: bytes, target: Route
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Answer one request (status, headers, body), in the request's thread. The
    request-started and -finished signals bracket it, as Django's handler does (they hand
    the database connection back to the pool)."""
    global served, rechecked
    served += 1
    signals.request_started.send(sender=Route, scope=scope)
    try:
        verdict = _Verdict()
        view, request = _start(scope, body, target)
        try:
            try:
                with cached_reads.attempt(cached=True) as first:
                    response = _answer(request, view, target, verdict)
                again = first.used and not first.confirmed
            except cached_reads.ReadAgain:
                again = True
            if again:
                rechecked += 1
                view, request = _start(scope, body, target)
                with cached_reads.attempt(cached=False):
                    response = _answer(request, view, target, verdict)
        except Exception as exc:
            # A bug or an outage, not a refusal: logged as Django logs a 500 (an error on
            # ``django.request``, which mails the admins when so configured), and answered
            # in the API's error shape rather than Django's HTML error page.
            response = Response(_SERVER_ERROR, status=500)
            log_response(
                "%s: %s", response.reason_phrase, request.path, response=response,
                request=request, exception=exc,
            )  # fmt: skip
        else:
            if response.status_code >= 400:
                # Logged as Django's handler logs every 4xx (a warning on ``django.request``).
                log_response(
                    "%s: %s", response.reason_phrase, request.path, response=response,
                    request=request,
                )  # fmt: skip
        return _encode(response, request, view)
    finally:
        signals.request_finished.send(sender=Route)


_SERVER_ERROR = {
    "error": {
        "code": "server_error",
        "message": "The server could not complete the request. Retrying it is safe: "
        "an authorization with the same request id, or a capture, is answered once.",
        "detail": {},
    }
}


def _start(scope: dict[str, Any], body: bytes, target: Route) -> tuple[APIView, _Request]:
    view = target.view()
    view.args, view.kwargs, view.format_kwarg = (), target.kwargs, None
    request = _Request(scope, body, view)
    view.request = request  # type: ignore[assignment]
    return view, request


def _keep_token(token: ApiToken) -> bool:
    from usage.services import token_cacheable  # imports models: after Django's setup

    return token_cacheable(token)


def _answer(request: _Request, view: APIView, target: Route, verdict: _Verdict) -> Response:
    try:
        authentication = ApiTokenAuthentication()
        authentication.keep_tokens = _keep_token
        authenticated = authentication.authenticate(request)  # type: ignore[arg-type]
        if authenticated is None:  # not a bearer token after all: cannot happen (route)
            raise drf_exceptions.NotAuthenticated()
        request.user, request.auth = authenticated
        if verdict.allowed is None:
            throttle = TokenRateThrottle()
            verdict.allowed = throttle.allow_request(request, view)  # type: ignore[arg-type]
            verdict.wait = throttle.wait()
        if not verdict.allowed:
            raise drf_exceptions.Throttled(verdict.wait)
        response: Response = view.post(request, **target.kwargs)  # type: ignore[attr-defined]
    except cached_reads.ReadAgain:
        raise
    except Exception as exc:  # rendered as DRF would render it, or re-raised
        response = _error(exc, view, request)
    return response


def _error(exc: Exception, view: APIView, request: _Request) -> Response:
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        header = ApiTokenAuthentication().authenticate_header(request)  # type: ignore[arg-type]
        cast(Any, exc).auth_header = header  # as APIView.handle_exception does
    response = api_exception_handler(exc, {"view": view, "request": request})
    if response is None:
        raise exc
    return response


def _encode(
    response: Response, request: _Request, view: APIView
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The response's bytes and headers, as DRF's ``finalize_response`` and rendering
    and then the header-adding middleware leave them."""
    content = _RENDERER.render(response.data, "application/json", {})
    response["Content-Type"] = _RENDERER.media_type
    for name, value in view.default_response_headers.items():  # Allow; Vary if negotiated
        response[name] = value
    # Each sets its headers on the response it is given and returns it.
    CreditsRemainingMiddleware(lambda _request: response)(request)
    for middleware in _HEADER_MIDDLEWARE:
        middleware.process_response(request, response)
    response["Content-Length"] = str(len(content))  # as CommonMiddleware sets it
    headers = [
        (name.lower().encode("latin1"), value.encode("latin1")) for name, value in response.items()
    ]
    return response.status_code, headers, content
