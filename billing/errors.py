from rest_framework import status

from config.errors import ApplicationError


class InvalidTopUpAmount(ApplicationError):
    code = "invalid_amount"
    default_message = "The amount must be a positive number with at most two decimal places."


class AmountBelowMinimum(ApplicationError):
    code = "amount_below_minimum"
    default_message = "The amount is below the minimum top-up."


class AmountAboveMaximum(ApplicationError):
    code = "amount_above_maximum"
    default_message = "The amount is above the maximum top-up."


class UnsupportedCurrency(ApplicationError):
    code = "unsupported_currency"
    default_message = "Top-ups are not available in this currency."


class UnknownPackage(ApplicationError):
    code = "unknown_package"
    default_message = "There is no active package with this code."


class PaymentMethodUnavailable(ApplicationError):
    code = "payment_method_unavailable"
    default_message = "This payment method is not available."


class TopUpNotAllowed(ApplicationError):
    code = "not_allowed"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "You are not allowed to top up this wallet."


class TopUpOrderNotFound(ApplicationError):
    code = "order_not_found"
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "Top-up order not found."


class InvalidOrderTransition(ApplicationError):
    code = "order_status_conflict"
    status_code = status.HTTP_409_CONFLICT
    default_message = "The order cannot move to this status from its current one."


class OrderNotReady(ApplicationError):
    """An event arrived before the one it depends on (a refund before the payment)."""

    code = "order_not_ready"
    status_code = status.HTTP_409_CONFLICT
    default_message = "The order is not in a state this event applies to yet."


class OrderNotRefundable(ApplicationError):
    code = "order_not_refundable"
    status_code = status.HTTP_409_CONFLICT
    default_message = "Only completed top-ups can be refunded."


class RefundExceedsRefundable(ApplicationError):
    code = "refund_exceeds_refundable"
    status_code = status.HTTP_409_CONFLICT
    default_message = "The refund is larger than the unused part of this top-up."


class RefundFailed(ApplicationError):
    code = "refund_failed"
    status_code = status.HTTP_502_BAD_GATEWAY
    default_message = "The payment provider refused the refund; no credits were taken back."


class PaymentProviderError(ApplicationError):
    """The provider gave a definite refusal (bad request, card or account problem)."""

    code = "payment_provider_error"
    status_code = status.HTTP_502_BAD_GATEWAY
    default_message = "The payment provider refused the request."


class PaymentProviderUnavailable(ApplicationError):
    """The provider could not be reached or failed; the outcome is unknown, retry later."""

    code = "payment_provider_unavailable"
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_message = "The payment provider is not reachable right now. Please try again."


class WebhookSignatureInvalid(ApplicationError):
    code = "invalid_signature"
    default_message = "The webhook signature is missing, invalid or too old."


class WebhookPayloadInvalid(ApplicationError):
    code = "invalid_payload"
    default_message = "The webhook body is not a valid event."
