from rest_framework import exceptions as drf_exceptions
from rest_framework import status

from config.errors import ApplicationError, CodedAPIError


class EmailTaken(ApplicationError):
    code = "email_taken"
    status_code = status.HTTP_409_CONFLICT
    default_message = "An account with this email address already exists."


class InvalidCountry(ApplicationError):
    code = "invalid_country"
    default_message = "The country must be a two-letter ISO 3166-1 code."


class OrganizationSlugTaken(ApplicationError):
    code = "organization_slug_taken"
    status_code = status.HTTP_409_CONFLICT
    default_message = "An organization with this slug already exists."


class AlreadyMember(ApplicationError):
    code = "already_member"
    status_code = status.HTTP_409_CONFLICT
    default_message = "This user is already a member of the organization."


class InvitationNotFound(ApplicationError):
    code = "invitation_not_found"
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "This invitation link is not valid."


class InvitationUnusable(ApplicationError):
    """Used already, or expired."""

    code = "invitation_unusable"
    status_code = status.HTTP_410_GONE
    default_message = "This invitation was already used or has expired. Ask for a new one."


class InvitationForAnotherEmail(ApplicationError):
    code = "invitation_for_another_email"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = (
        "This invitation was sent to another email address. Sign in with that address to accept it."
    )


class NotAllowed(ApplicationError):
    code = "not_allowed"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "You are not allowed to do this."


class LastOwner(ApplicationError):
    code = "last_owner"
    status_code = status.HTTP_409_CONFLICT
    default_message = "An organization must keep at least one owner."


# --- API tokens -----------------------------------------------------------------------


class InvalidScopes(ApplicationError):
    code = "invalid_scopes"
    default_message = "Scopes must be a non-empty subset of inference, metering and read."


class InvalidIpRule(ApplicationError):
    code = "invalid_ip_rule"
    default_message = "Allowed addresses must be IP addresses or CIDR ranges."


class InvalidModelRule(ApplicationError):
    code = "invalid_model_rule"
    default_message = "Allowed models must be model ids or patterns of at most 100 characters."


class InvalidQuota(ApplicationError):
    code = "invalid_quota"
    default_message = "The quota must be a non-negative number of credits."


class InvalidLimit(ApplicationError):
    code = "invalid_limit"
    default_message = "The budget or rate limit is not valid."


class InvalidTokenName(ApplicationError):
    code = "invalid_token_name"
    default_message = "A token needs a name of at most 100 characters."


class NotAMember(ApplicationError):
    code = "not_a_member"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "Only members of the organization can spend from its pool."


class TokenAlreadyRevoked(ApplicationError):
    code = "token_revoked"
    status_code = status.HTTP_409_CONFLICT
    default_message = "This token was revoked."


# Raised while authenticating a request: DRF's own types, so 401 carries WWW-Authenticate.


class InvalidToken(CodedAPIError, drf_exceptions.AuthenticationFailed):
    error_code = "invalid_token"
    default_detail = "The API token is not valid."


class TokenRevoked(CodedAPIError, drf_exceptions.AuthenticationFailed):
    error_code = "token_revoked"
    default_detail = "This API token was revoked."


class TokenExpired(CodedAPIError, drf_exceptions.AuthenticationFailed):
    error_code = "token_expired"
    default_detail = "This API token has expired."


class IpNotAllowed(CodedAPIError, drf_exceptions.PermissionDenied):
    error_code = "ip_not_allowed"
    default_detail = "This API token may not be used from this address."


class InsufficientScope(CodedAPIError, drf_exceptions.PermissionDenied):
    error_code = "insufficient_scope"
    default_detail = "This API token does not have the scope this endpoint needs."


class TokenRequired(CodedAPIError, drf_exceptions.PermissionDenied):
    error_code = "token_required"
    default_detail = "This endpoint needs an API token (Authorization: Bearer sk-live-...)."


class InvalidWebhookUrl(ApplicationError):
    code = "invalid_webhook_url"
    default_message = "The alert webhook must be an https:// URL."
