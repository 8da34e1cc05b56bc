"""Every error the gateway shows a client, in OpenAI's shape, computed in this one place:

    {"error": {"message", "type", "code", "param"}}   (+ "limit_source" on a cap's refusal)

so the official ``openai`` client raises its usual exceptions (``AuthenticationError``,
``PermissionDeniedError``, ``NotFoundError``, ``RateLimitError``, ``APIStatusError`` for
402). Our own refusals keep their stable ``code`` (``insufficient_credits``,
``model_not_allowed``, ...), except an unknown model, which is OpenAI's 404
``model_not_found``.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from django.http import JsonResponse
from rest_framework import status
from rest_framework.exceptions import APIException

from accounts.middleware import HEADER as CREDITS_REMAINING
from config.errors import ApplicationError, CodedAPIError
from usage.errors import UnknownModel

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class InvalidRequest(ApplicationError):
    code = "invalid_request"
    default_message = "The request is not valid."


class MethodNotAllowed(ApplicationError):
    code = "method_not_allowed"
    status_code = status.HTTP_405_METHOD_NOT_ALLOWED
    default_message = "This endpoint does not accept this method."


class MissingApiKey(ApplicationError):
    code = "missing_api_key"
    status_code = status.HTTP_401_UNAUTHORIZED
    default_message = (
        "You didn't provide an API key. Send it as a bearer token: "
        "Authorization: Bearer sk-live-..."
    )


class UpstreamUnavailable(ApplicationError):
    """No channel answered (connection error, timeout or 5xx on every one)."""

    code = "upstream_unavailable"
    status_code: ClassVar[int] = status.HTTP_502_BAD_GATEWAY
    default_message = "The model provider could not be reached. Nothing was charged."


class UpstreamTimeout(UpstreamUnavailable):
    code = "upstream_timeout"
    status_code = status.HTTP_504_GATEWAY_TIMEOUT
    default_message = "The model provider did not answer in time. Nothing was charged."


class UpstreamRefused(ApplicationError):
    """The upstream answered 4xx: its status and error are passed on."""

    code = "upstream_error"
    default_message = "The model provider refused the request. Nothing was charged."


def error_type(status_code: int) -> str:
    return _TYPES.get(status_code, "api_error" if status_code >= 500 else "invalid_request_error")


def error_body(exc: Exception) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI-shaped body for any error the gateway raises or meets."""
    if isinstance(exc, ApplicationError):
        status_code, message, detail = exc.status_code, exc.message, dict(exc.detail)
        code = "model_not_found" if isinstance(exc, UnknownModel) else exc.code
        if isinstance(exc, UnknownModel):
            status_code = status.HTTP_404_NOT_FOUND
            message = f"The model '{detail.get('model', '')}' does not exist."
            detail["param"] = "model"
        if isinstance(exc, UpstreamRefused):
            status_code = int(detail.get("status", status.HTTP_400_BAD_REQUEST))
            code = detail.get("code") or code
    elif isinstance(exc, APIException):  # authentication and scope errors
        status_code, message = exc.status_code, str(exc.detail)
        detail = dict(getattr(exc, "error_detail", {}))
        code = exc.error_code if isinstance(exc, CodedAPIError) else str(exc.default_code)
    else:
        status_code, message, detail, code = 500, "Internal error.", {}, "internal_error"
    error: dict[str, Any] = {
        "message": message,
        "type": detail.get("type") or error_type(status_code),
        "code": code,
        "param": detail.get("param") or detail.get("field"),
    }
    if detail.get("limit_source"):
        error["limit_source"] = detail["limit_source"]
    return status_code, {"error": error}


def upstream_refusal(status_code: int, body: bytes) -> UpstreamRefused:
    """An upstream's 4xx answer as our error, keeping its message, type, code and param
    when it sent an OpenAI-shaped body."""
    try:
        upstream = json.loads(body).get("error")
    except (ValueError, AttributeError):
        upstream = None
    if not isinstance(upstream, dict):
        upstream = {}
    message = str(upstream.get("message") or UpstreamRefused.default_message)
    return UpstreamRefused(
        message[:1000],
        status=status_code,
        type=upstream.get("type"),
        code=upstream.get("code"),
        param=upstream.get("param"),
    )


def error_response(exc: Exception, *, credits_remaining: str | None = None) -> JsonResponse:
    status_code, body = error_body(exc)
    response = JsonResponse(body, status=status_code)
    if credits_remaining is not None:
        response[CREDITS_REMAINING] = credits_remaining
    retry_after = getattr(exc, "detail", None)
    if isinstance(retry_after, dict) and retry_after.get("retry_after") is not None:
        response["Retry-After"] = str(int(retry_after["retry_after"]))
    return response


def stream_error_event(exc: Exception) -> bytes:
    """An error after the stream began, as an SSE event the ``openai`` client raises on."""
    _, body = error_body(exc)
    return b"data: " + json.dumps(body).encode() + b"\n\n"
