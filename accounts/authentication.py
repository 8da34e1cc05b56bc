"""DRF authentication, scopes and throttling for API tokens.

``Authorization: Bearer sk-live-<prefix>-<secret>`` authenticates as the token's owner with
``request.auth`` set to the ``ApiToken``. The scope check lives here too, at the one point
every DRF endpoint passes through, so no endpoint can forget it: a view declares
``required_scope`` (or ``required_scopes`` per HTTP method); a view that declares nothing is
open to tokens with the ``read`` scope for safe methods and closed to tokens otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from accounts import services
from accounts.errors import InsufficientScope, InvalidToken, TokenRequired
from accounts.models import ApiToken, User
from config import cached_reads
from config.ratelimit import Window
from wallet import selectors as wallet_selectors

_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def client_ip(request: HttpRequest | Request) -> str:
    """The peer address. Behind a proxy, run uvicorn with ``--proxy-headers`` and
    ``--forwarded-allow-ips`` so this is the client's address, not the proxy's."""
    return request.META.get("REMOTE_ADDR", "") or ""


def required_scope(view: Any, method: str) -> str | None:
    """The scope a token needs to call ``view`` with ``method`` (None: tokens refused)."""
    per_method = getattr(view, "required_scopes", None)
    if per_method is not None:
        if method.upper() in per_method:
            return per_method[method.upper()]
        # A method the view does not implement gets DRF's 405; one it implements but did
        # not declare is refused.
        return None if hasattr(view, method.lower()) else ApiToken.Scope.READ
    declared = getattr(view, "required_scope", None)
    if declared is not None:
        return str(declared)
    return ApiToken.Scope.READ if method.upper() in _SAFE_METHODS else None


class ApiTokenAuthentication(BaseAuthentication):
    keyword = b"bearer"
    # The metering fast path's: which tokens to keep in memory (``api_token_authenticate``).
    keep_tokens: Callable[[ApiToken], bool] | None = None

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword:
            return None  # not ours: session authentication may still apply
        if len(header) != 2:
            raise InvalidToken("The Authorization header must be: Bearer <token>.")
        try:
            secret = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidToken() from exc
        token = services.api_token_authenticate(
            secret=secret,
            client_ip=client_ip(request),
            keep=self.keep_tokens,
        )
        view = (request.parser_context or {}).get("view")
        scope = required_scope(view, request.method or "GET")
        if scope is None or not token.has_scope(scope):
            cached_reads.require_uncached()  # a kept token's scopes may be out of date
            raise InsufficientScope(required_scope=scope, token_scopes=list(token.scopes))
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def token_request_window() -> Window:
    """``API_TOKEN_RATE_LIMIT`` requests per minute per token: one window shared by the DRF
    APIs and the gateway. It limits throughput, not guessing, so it fails open."""
    return Window("api-token", limit=settings.API_TOKEN_RATE_LIMIT, seconds=60, fail_open=True)


class TokenRateThrottle(BaseThrottle):
    """``API_TOKEN_RATE_LIMIT`` requests per minute per token, counted in Redis (one round
    trip), so the limit holds across every web process. Session requests are not counted."""

    def allow_request(self, request: Request, view: Any) -> bool:
        token = request.auth
        limit = settings.API_TOKEN_RATE_LIMIT
        if not isinstance(token, ApiToken) or limit <= 0:
            return True
        window = token_request_window()
        subject = str(token.pk)
        if window.hit(subject) <= limit:
            return True
        self._wait = window.retry_after(subject)
        return False

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)


def request_token(request: Request) -> ApiToken | None:
    token = request.auth
    return token if isinstance(token, ApiToken) else None


def request_token_required(request: Request) -> ApiToken:
    """The request's API token; endpoints that spend credits need one (a session has no
    wallet, tier or quota to spend under)."""
    token = request_token(request)
    if token is None:
        raise TokenRequired()
    return token


def request_wallet_id(request: Request) -> int:
    """The wallet a request acts on: the token's, or a signed-in user's own wallet."""
    token = request_token(request)
    if token is not None:
        return token.wallet_id
    return wallet_selectors.wallet_get_for_user(user=request.user).pk
