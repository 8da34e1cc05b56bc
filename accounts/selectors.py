from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Membership, Organization, User, normalize_email


def user_get_by_email(*, email: str) -> User | None:
    return User.objects.filter(email__iexact=normalize_email(email)).first()


def organization_list_for_user(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("name")


def membership_get(*, organization: Organization, user: User) -> Membership | None:
    return Membership.objects.filter(organization=organization, user=user).first()


def membership_list(*, organization: Organization) -> QuerySet[Membership]:
    return organization.memberships.select_related("user").order_by("role", "user__email")
