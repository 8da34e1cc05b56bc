from typing import Any, ClassVar

from rest_framework import status

from config.errors import ApplicationError


class UnknownModel(ApplicationError):
    code = "unknown_model"
    default_message = "No such model in the price catalog."


class InvalidUsage(ApplicationError):
    code = "invalid_usage"
    default_message = "The usage figures are not valid."


class InvalidPrice(ApplicationError):
    code = "invalid_price"
    default_message = "The price is not valid."


class LimitRefused(ApplicationError):
    """A cap refused an authorization or a charge; nothing was changed. ``limit_source``
    names the cap (``wallet`` comes from ``wallet.errors.InsufficientCredits``)."""

    limit_source: ClassVar[str] = ""
    status_code: ClassVar[int] = status.HTTP_402_PAYMENT_REQUIRED

    def __init__(self, message: str | None = None, **detail: Any) -> None:
        detail.setdefault("limit_source", self.limit_source)
        super().__init__(message, **detail)


class TokenQuotaExceeded(LimitRefused):
    code = "token_quota_exceeded"
    limit_source = "token_quota"
    default_message = "This API token's quota would be exceeded."


class MemberLimitExceeded(LimitRefused):
    code = "member_limit_exceeded"
    limit_source = "member_limit"
    default_message = "Your monthly spend limit in this organization would be exceeded."


class MinimumBalanceRequired(LimitRefused):
    code = "minimum_balance_required"
    limit_source = "minimum_balance"
    default_message = "The wallet's available credits are below the minimum to start a request."


class TokenBudgetExceeded(LimitRefused):
    """The token's budget for this period would be exceeded; ``detail.retry_after`` (also
    the ``Retry-After`` header) is the number of seconds until the budget resets."""

    code = "token_budget_exceeded"
    limit_source = "token_budget"
    default_message = "This API token's budget for the period would be exceeded."


class RateLimitExceeded(LimitRefused):
    """Too many requests or tokens per minute for this token (``detail.limit``: ``rpm`` or
    ``tpm``); ``retry_after`` seconds until the window has room."""

    code = "rate_limit_exceeded"
    limit_source = "rate_limit"
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_message = "This API token's rate limit was reached. Try again later."


class ModelNotAllowed(LimitRefused):
    code = "model_not_allowed"
    limit_source = "model_not_allowed"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "This API token may not use this model."


class AuthorizationNotFound(ApplicationError):
    code = "authorization_not_found"
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "Authorization not found."


class UsageRecordNotFound(ApplicationError):
    code = "usage_record_not_found"
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "Usage record not found."
