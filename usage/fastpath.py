"""The two busiest metering endpoints served without Django's middleware stack and DRF's
request and response machinery: ``POST /api/v1/authorizations`` and
``POST /api/v1/authorizations/{id}/capture`` with a bearer token and a JSON body.

It is DRF's dispatch in miniature, around the same view classes: the same authentication
class authenticates the token and checks the view's scope, the same throttle counts the
request, the view's own ``post`` runs (validation, the service call, the payload), errors
go through the project's exception handler, and the body is rendered by DRF's
``JSONRenderer``. What it leaves out is what these requests do not use: sessions, CSRF
(token requests are exempt), messages, content negotiation (JSON only), and Django's
request, response and middleware objects. The headers the skipped middleware would add
are added here (``_SECURITY_HEADERS``, ``X-Credits-Remaining``).

Anything else (another method or path, no bearer token, another content type, a query
string) is served by the full stack, unchanged. ``tests/usage/test_fastpath.py`` sends the
same requests both ways and compares status, headers and bodies.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any, cast

from django.conf import settings
from django.core import signals
from django.http.request import HttpHeaders
from django.utils.log import log_response
from rest_framework import exceptions as drf_exceptions
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import ApiTokenAuthentication, TokenRateThrottle
from accounts.middleware import HEADER as CREDITS_REMAINING
from accounts.middleware import credits_remaining
from accounts.models import ApiToken
from config.errors import api_exception_handler

_PATH = re.compile(r"^/api/v1/authorizations(?:/(?P<authorization_id>[0-9]+)/capture)?$")

# What SecurityMiddleware and XFrameOptionsMiddleware add to every response (with this
# project's settings; the test compares them with the full stack's).
_SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class Route:
    """A request this path serves: the view class and its URL arguments."""

    def __init__(self, view: type[APIView], kwargs: dict[str, Any], length: int) -> None:
        self.view = view
        self.kwargs = kwargs
        self.length = length


def route(scope: dict[str, Any]) -> Route | None:
    """The route for an ASGI request, if this path serves it (decided from the request
    line and headers alone, before anything is read or counted)."""
    if scope["method"] != "POST" or scope.get("query_string") or not settings.METERING_FAST_PATH:
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


class _Request:
    """What the views, the authentication class and the throttle read of a request."""

    def __init__(self, scope: dict[str, Any], body: bytes, view: APIView) -> None:
        meta: dict[str, Any] = {"REQUEST_METHOD": "POST", "QUERY_STRING": ""}
        client = scope.get("client")
        if client:
            meta["REMOTE_ADDR"] = client[0]
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin1").upper().replace("-", "_")
            if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                name = "HTTP_" + name
            value = raw_value.decode("latin1")
            meta[name] = f"{meta[name]},{value}" if name in meta else value
        self.META = meta
        self.headers = HttpHeaders(meta)
        self.method = "POST"
        self.body = body
        self.parser_context = {"view": view}
        self.auth: ApiToken | None = None
        self.user: Any = None
        self._data: Any = None

    @property
    def data(self) -> Any:
        if self._data is None:
            self._data = _PARSER.parse(io.BytesIO(self.body), "application/json", {})
        return self._data


_PARSER = JSONParser()
_RENDERER = JSONRenderer()
served = 0  # requests this process answered here (for operators and tests)


def serve(
    scope: dict[str, Any], body: bytes, target: Route
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Answer one request (status, headers, body), in the request's thread. The
    request-started and -finished signals bracket it, as Django's handler does (they hand
    the database connection back to the pool)."""
    global served
    served += 1
    signals.request_started.send(sender=Route, scope=scope)
    try:
        return _answer(scope, body, target)
    except Exception:
        # A bug or an outage, not a refusal: logged as Django logs a 500 (to the
        # ``django.request`` logger, which mails the admins when so configured), and
        # answered in the API's error shape rather than Django's HTML error page.
        _server_errors.error("Internal Server Error: %s", scope["path"], exc_info=True)
        content = _RENDERER.render(_SERVER_ERROR, "application/json", {})
        headers = [(b"content-type", b"application/json"), *_SECURITY_HEADERS]
        headers.append((b"content-length", str(len(content)).encode()))
        return 500, headers, content
    finally:
        signals.request_finished.send(sender=Route)


_server_errors = logging.getLogger("django.request")
_SERVER_ERROR = {
    "error": {
        "code": "server_error",
        "message": "The server could not complete the request. Retrying it is safe: "
        "an authorization with the same request id, or a capture, is answered once.",
        "detail": {},
    }
}


def _answer(
    scope: dict[str, Any], body: bytes, target: Route
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    view = target.view()
    view.args, view.kwargs, view.format_kwarg = (), target.kwargs, None
    request = _Request(scope, body, view)
    view.request = request  # type: ignore[assignment]
    try:
        authenticated = ApiTokenAuthentication().authenticate(request)  # type: ignore[arg-type]
        if authenticated is None:  # not a bearer token after all: cannot happen (route)
            raise drf_exceptions.NotAuthenticated()
        request.user, request.auth = authenticated
        throttle = TokenRateThrottle()
        if not throttle.allow_request(request, view):  # type: ignore[arg-type]
            raise drf_exceptions.Throttled(throttle.wait())
        response: Response = view.post(request, **target.kwargs)  # type: ignore[attr-defined]
    except Exception as exc:  # rendered as DRF would render it, or re-raised
        response = _error(exc, view, request)
        # Logged as Django's handler logs every 4xx (a warning on ``django.request``).
        log_response("%s: %s", response.reason_phrase, scope["path"], response=response)
    return _encode(response, request, view)


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
    content = _RENDERER.render(response.data, "application/json", {})
    headers = [(b"content-type", b"application/json")]
    # DRF's finalize_response: the view's own headers (Allow; Vary when it negotiates).
    for name, value in view.default_response_headers.items():
        if name not in response:
            headers.append((name.lower().encode("latin1"), value.encode("latin1")))
    for name, value in response.items():
        if name.lower() != "content-type":  # HttpResponse's default; the body is JSON
            headers.append((name.lower().encode("latin1"), value.encode("latin1")))
    if CREDITS_REMAINING not in response and isinstance(request.auth, ApiToken):
        headers.append((b"x-credits-remaining", credits_remaining(request.auth).encode()))
    headers.extend(_SECURITY_HEADERS)
    headers.append((b"content-length", str(len(content)).encode()))
    return response.status_code, headers, content
