from rest_framework import status

from config.errors import ApplicationError


class InvalidAmount(ApplicationError):
    code = "invalid_amount"
    default_message = "The amount is not valid."


class InvalidCategory(ApplicationError):
    code = "invalid_category"
    default_message = "Unknown credit category."


class InvalidExpiry(ApplicationError):
    code = "invalid_expiry"
    default_message = "The expiry must be in the future."


class ReasonRequired(ApplicationError):
    code = "reason_required"
    default_message = "A reason is required for this operation."


class IdempotencyKeyRequired(ApplicationError):
    code = "idempotency_key_required"
    default_message = "An idempotency key is required."


class InsufficientCredits(ApplicationError):
    code = "insufficient_credits"
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_message = "Not enough credits available."

    def __init__(self, message: str | None = None, **detail: object) -> None:
        detail.setdefault("limit_source", "wallet")
        super().__init__(message, **detail)


class BalanceWouldGoNegative(ApplicationError):
    code = "balance_would_go_negative"
    status_code = status.HTTP_409_CONFLICT
    default_message = "This would take the balance below zero."


class WalletNotFound(ApplicationError):
    code = "wallet_not_found"
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "Wallet not found."


class WalletClosed(ApplicationError):
    code = "wallet_closed"
    status_code = status.HTTP_409_CONFLICT
    default_message = "This wallet is closed."


class HoldNotFound(ApplicationError):
    code = "hold_not_found"
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "Authorization hold not found."


class HoldNotActive(ApplicationError):
    code = "hold_not_active"
    status_code = status.HTTP_409_CONFLICT
    default_message = "This authorization hold is no longer active."


class HoldAlreadyCaptured(HoldNotActive):
    code = "hold_already_captured"
    default_message = "This authorization hold was already captured with a different amount."


class HoldReleased(HoldNotActive):
    code = "hold_released"
    default_message = "This authorization hold was released."


class HoldExpired(HoldNotActive):
    code = "hold_expired"
    default_message = "This authorization hold expired."


class LotNotReversible(ApplicationError):
    code = "lot_not_reversible"
    status_code = status.HTTP_409_CONFLICT
    default_message = "The credits of this lot have already been used or taken back."
