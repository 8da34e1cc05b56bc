"""One application error type with a stable machine-readable code, and the one DRF exception
handler that renders every error as ``{"error": {"code", "message", "detail"}}``.

Domain errors (``InsufficientCredits``, ``CodeExpired``, ...) subclass ``ApplicationError``
in their own app; interfaces never invent codes of their own.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response


class ApplicationError(Exception):
    """Base of every error the application raises on purpose.

    ``code`` is stable and documented; ``message`` is for humans; ``detail`` carries
    machine-readable context (for example ``limit_source`` or the available balance).
    """

    code: ClassVar[str] = "application_error"
    status_code: ClassVar[int] = status.HTTP_400_BAD_REQUEST
    default_message: ClassVar[str] = "The request could not be completed."

    def __init__(self, message: str | None = None, **detail: Any) -> None:
        self.message = message or self.default_message
        self.detail = detail
        super().__init__(self.message)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "detail": self.detail}


class ValidationFailed(ApplicationError):
    code = "invalid_input"
    status_code = status.HTTP_400_BAD_REQUEST
    default_message = "The input is not valid."


class NotFound(ApplicationError):
    code = "not_found"
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "Not found."


class IdempotencyConflict(ApplicationError):
    """The idempotency key was already used for a different request."""

    code = "idempotency_conflict"
    status_code = status.HTTP_409_CONFLICT
    default_message = "This idempotency key was already used with different parameters."


class RequestTooLarge(ApplicationError):
    code = "request_too_large"
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_message = "The request body is larger than this server accepts."


class RateLimited(ApplicationError):
    code = "rate_limited"
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_message = "Too many attempts. Try again later."


class LimiterUnavailable(ApplicationError):
    """A limit that guards a guessable input (log-ins, redemption codes) could not be
    checked: the attempt is refused rather than let through unlimited."""

    code = "limiter_unavailable"
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_message = "This is briefly unavailable. Please try again in a minute."


class CodedAPIError:
    """Mixin for DRF's own exception types (``AuthenticationFailed``, ``PermissionDenied``)
    raised where DRF expects them, e.g. in an authentication class, so DRF keeps its 401/403
    handling (``WWW-Authenticate``) while the response carries our stable code and detail."""

    error_code: ClassVar[str] = "error"

    def __init__(self, message: str | None = None, **detail: Any) -> None:
        super().__init__(message)  # type: ignore[call-arg]
        self.error_detail = detail


def error_response(error: ApplicationError) -> Response:
    response = Response({"error": error.as_dict()}, status=error.status_code)
    retry_after = error.detail.get("retry_after")
    if retry_after is not None:
        response["Retry-After"] = str(int(retry_after))
    return response


_DRF_CODES = {
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "rate_limited",
    drf_exceptions.ParseError: "malformed_request",
    drf_exceptions.ValidationError: "invalid_input",
}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render application errors and DRF's own errors in the one error shape."""
    # Imported here: importing rest_framework.views loads the authentication classes,
    # which import their errors from this module.
    from rest_framework.views import exception_handler as drf_default_handler

    if isinstance(exc, ApplicationError):
        return error_response(exc)
    if isinstance(exc, RequestDataTooBig):
        return error_response(RequestTooLarge(limit_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE))
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = drf_default_handler(exc, context)
    if response is None or not isinstance(exc, drf_exceptions.APIException):
        return response
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, drf_exceptions.ValidationError):
        message = "The input is not valid."
        detail: Any = {"fields": exc.detail}
    else:
        message = str(exc.detail)
        detail = {}
    if isinstance(exc, CodedAPIError):
        code = exc.error_code
        detail = dict(exc.error_detail)
    wait = getattr(exc, "wait", None)
    if isinstance(exc, drf_exceptions.Throttled) and wait is not None:
        detail["retry_after"] = int(wait) + 1
    response.data = {"error": {"code": code, "message": message, "detail": detail}}
    return response
