from rest_framework import status

from config.errors import ApplicationError


class InviteCodeNotFound(ApplicationError):
    code = "invite_code_not_found"
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "This invite code does not exist."


class SelfReferral(ApplicationError):
    code = "self_referral"
    status_code = status.HTTP_409_CONFLICT
    default_message = "You cannot invite yourself."


class AlreadyReferred(ApplicationError):
    code = "already_referred"
    status_code = status.HTTP_409_CONFLICT
    default_message = "This account was already invited by someone."


class ReferralWindowClosed(ApplicationError):
    code = "referral_window_closed"
    status_code = status.HTTP_409_CONFLICT
    default_message = "An invitation can only be recorded when the account signs up."


class TransferBelowMinimum(ApplicationError):
    code = "transfer_below_minimum"
    default_message = "The amount is below the minimum transfer."


class InsufficientRewardBalance(ApplicationError):
    code = "insufficient_reward_balance"
    status_code = status.HTTP_409_CONFLICT
    default_message = "Your reward balance is smaller than this amount."
