"""``X-Credits-Remaining`` on every response to an API token holder, set in this one place:
the available credits of the token's wallet after the request, in credits (6 decimals).

Synchronous: the production ASGI handler runs the whole middleware stack in the request's
thread (see ``config/asgi.py``), where the one database read it makes belongs.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.messages.middleware import MessageMiddleware
from django.http import HttpRequest, HttpResponseBase

from accounts.models import ApiToken
from wallet import money
from wallet import selectors as wallet_selectors

HEADER = "X-Credits-Remaining"


def credits_remaining_header(available_micro: int) -> str:
    """The header's value: available credits with six decimals."""
    return f"{money.micro_to_credits(available_micro):.6f}"


def credits_remaining(token: ApiToken) -> str:
    return credits_remaining_header(wallet_selectors.wallet_available(wallet_id=token.wallet_id))


class CreditsRemainingMiddleware:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        # DRF sets ``auth`` on the underlying HttpRequest when it authenticates a request.
        token = getattr(request, "auth", None)
        if isinstance(token, ApiToken) and HEADER not in response:
            response[HEADER] = credits_remaining(token)
        return response


# Paths served to API clients (the metering and account API, the OpenAI-compatible gateway).
API_PATH_PREFIXES = ("/api/", "/v1/")


class PageMessageMiddleware(MessageMiddleware):
    """Django's messages, for pages only: API responses never show messages, and setting up
    the storage (a signed cookie reader) on every metering call is a measurable share of its
    server time. Messages queued by a page are kept for the next page either way."""

    def process_request(self, request: HttpRequest) -> None:
        if not request.path_info.startswith(API_PATH_PREFIXES):
            super().process_request(request)
