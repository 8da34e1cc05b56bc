from rest_framework import status

from config.errors import ApplicationError


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


class NotAllowed(ApplicationError):
    code = "not_allowed"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "You are not allowed to do this."


class LastOwner(ApplicationError):
    code = "last_owner"
    status_code = status.HTTP_409_CONFLICT
    default_message = "An organization must keep at least one owner."
