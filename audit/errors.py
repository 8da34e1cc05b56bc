from rest_framework import status

from config.errors import ApplicationError


class StaffActionNotAllowed(ApplicationError):
    code = "staff_action_not_allowed"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "Your staff role does not allow this action."


class AdjustmentOverLimit(StaffActionNotAllowed):
    code = "adjustment_over_limit"
    default_message = "This amount is above the support adjustment limit; ask Finance."


class ChargeAlreadyCorrected(ApplicationError):
    code = "charge_already_corrected"
    status_code = status.HTTP_409_CONFLICT
    default_message = "This usage record's charge was already corrected."
