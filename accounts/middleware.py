"""``X-Credits-Remaining`` on every response to an API token holder, set in this one place:
the available credits of the token's wallet after the request, in credits (6 decimals)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase

from accounts.models import ApiToken
from wallet import money
from wallet import selectors as wallet_selectors

HEADER = "X-Credits-Remaining"


def credits_remaining(token: ApiToken) -> str:
    available = wallet_selectors.wallet_available(wallet_id=token.wallet_id)
    return f"{money.micro_to_credits(available):.6f}"


def _token(request: HttpRequest) -> ApiToken | None:
    # DRF sets ``auth`` on the underlying HttpRequest when it authenticates a request.
    token = getattr(request, "auth", None)
    return token if isinstance(token, ApiToken) else None


class CreditsRemainingMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        response: HttpResponseBase = self.get_response(request)
        token = _token(request)
        if token is not None and HEADER not in response:
            response[HEADER] = credits_remaining(token)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response: HttpResponseBase = await self.get_response(request)
        token = _token(request)
        if token is not None and HEADER not in response:
            response[HEADER] = await sync_to_async(credits_remaining)(token)
        return response
