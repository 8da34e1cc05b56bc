from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import (
    ApiToken,
    Invitation,
    Membership,
    Organization,
    TokenGroup,
    User,
    normalize_email,
)


def user_get_by_email(*, email: str) -> User | None:
    return User.objects.filter(email__iexact=normalize_email(email)).first()


def organization_list_for_user(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("name")


def membership_get(*, organization: Organization, user: User) -> Membership | None:
    return Membership.objects.filter(organization=organization, user=user).first()


def membership_list(*, organization: Organization) -> QuerySet[Membership]:
    return organization.memberships.select_related("user").order_by("role", "user__email")


def api_token_list_for_user(*, user: User) -> QuerySet[ApiToken]:
    """The user's own tokens (personal and on organization pools), newest first."""
    return (
        ApiToken.objects.filter(user=user)
        .select_related("group", "organization")
        .order_by("status", "-created_at", "-id")
    )


def api_token_get_for_user(*, user: User, token_id: int) -> ApiToken | None:
    return ApiToken.objects.filter(user=user, pk=token_id).first()


def token_group_list() -> QuerySet[TokenGroup]:
    return TokenGroup.objects.select_related("tier").order_by("-is_default", "name")


def organization_get_for_user(*, user: User, slug: str) -> Organization | None:
    """An organization ``user`` belongs to; anyone else's is ``None`` (same as missing)."""
    return Organization.objects.filter(slug=slug, memberships__user=user).first()


def api_token_quota_left(*, token: ApiToken) -> int | None:
    """µcr the token may still spend under its quota; ``None`` when it has no quota."""
    if token.quota_micro is None:
        return None
    return max(token.quota_micro - token.used_micro, 0)


def invitation_list_open(*, organization: Organization) -> QuerySet[Invitation]:
    """Invitations of ``organization`` not yet accepted and not expired, newest first."""
    return Invitation.objects.filter(
        organization=organization, accepted_at__isnull=True, expires_at__gt=timezone.now()
    ).order_by("-created_at")
