from rest_framework import status

from config.errors import ApplicationError


class RedemptionError(ApplicationError):
    """A redemption refused for a reason a guesser could learn from: counted by the
    per-user and per-address limit on failed attempts."""


class CodeNotFound(RedemptionError):
    code = "code_not_found"
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "This code does not exist. Check it for typos."


class CodeExpired(RedemptionError):
    code = "code_expired"
    status_code = status.HTTP_410_GONE
    default_message = "This code has expired."


class CodeDisabled(RedemptionError):
    code = "code_disabled"
    status_code = status.HTTP_410_GONE
    default_message = "This code is no longer valid."


class CodeExhausted(RedemptionError):
    code = "code_exhausted"
    status_code = status.HTTP_409_CONFLICT
    default_message = "This code has already been used as often as it allows."


class AlreadyRedeemed(RedemptionError):
    code = "already_redeemed"
    status_code = status.HTTP_409_CONFLICT
    default_message = "You have already redeemed this code."


class NotEligible(RedemptionError):
    code = "not_eligible"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "Your account is not eligible for this code."
