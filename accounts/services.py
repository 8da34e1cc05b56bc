"""Writes for people and organizations. Every new user and organization gets its wallet in
the same transaction, so no owner ever exists without one."""

from __future__ import annotations

import re

from django.db import IntegrityError, transaction
from django.utils.text import slugify

from accounts.errors import (
    AlreadyMember,
    EmailTaken,
    InvalidCountry,
    LastOwner,
    NotAllowed,
    OrganizationSlugTaken,
)
from accounts.models import Membership, Organization, User, normalize_email
from wallet import money
from wallet import services as wallet_services

_COUNTRY = re.compile(r"^[A-Z]{2}$")


def _clean_country(country: str) -> str:
    country = (country or "").strip().upper()
    if country and not _COUNTRY.match(country):
        raise InvalidCountry(country=country)
    return country


@transaction.atomic
def user_create(
    *,
    email: str,
    password: str | None,
    full_name: str = "",
    country: str = "",
    is_staff: bool = False,
    is_superuser: bool = False,
) -> User:
    """Create a user and their personal wallet. Emails are unique without regard to case."""
    email = normalize_email(email)
    country = _clean_country(country)
    if User.objects.filter(email__iexact=email).exists():
        raise EmailTaken(email=email)
    try:
        with transaction.atomic():
            user = User.objects.create_user(
                email=email,
                password=password,
                full_name=full_name.strip(),
                country=country,
                is_staff=is_staff,
                is_superuser=is_superuser,
            )
    except IntegrityError as exc:  # a concurrent sign-up with the same address won
        raise EmailTaken(email=email) from exc
    wallet_services.wallet_create(user=user)
    return user


def user_set_active(*, user: User, is_active: bool) -> User:
    User.objects.filter(pk=user.pk).update(is_active=is_active)
    user.is_active = is_active
    return user


@transaction.atomic
def organization_create(*, name: str, owner: User, slug: str = "") -> Organization:
    """Create an organization with ``owner`` as its first owner, and its pool wallet."""
    slug = slugify(slug or name)[:80]
    if not slug:
        raise OrganizationSlugTaken("The organization needs a name made of letters or digits.")
    if Organization.objects.filter(slug=slug).exists():
        raise OrganizationSlugTaken(slug=slug)
    try:
        with transaction.atomic():
            organization = Organization.objects.create(
                name=name.strip(), slug=slug, created_by=owner
            )
    except IntegrityError as exc:
        raise OrganizationSlugTaken(slug=slug) from exc
    Membership.objects.create(organization=organization, user=owner, role=Membership.Role.OWNER)
    wallet_services.wallet_create(organization=organization)
    return organization


def _limit_micro(limit_credits: object) -> int | None:
    if limit_credits is None or limit_credits == "":
        return None
    return money.credits_to_micro(limit_credits, allow_zero=True)


def _require_manager(*, organization: Organization, actor: User) -> None:
    if not Membership.objects.filter(
        organization=organization,
        user=actor,
        role__in=[Membership.Role.OWNER, Membership.Role.ADMIN],
    ).exists():
        raise NotAllowed("Only owners and admins can manage members.")


@transaction.atomic
def membership_add(
    *,
    organization: Organization,
    user: User,
    actor: User,
    role: str = Membership.Role.MEMBER,
    monthly_spend_limit_credits: object = None,
) -> Membership:
    """Add ``user`` to ``organization``; only owners and admins may, and only owners can
    create owners."""
    _require_manager(organization=organization, actor=actor)
    if role not in Membership.Role.values:
        raise NotAllowed("Unknown role.", role=role)
    if (
        role == Membership.Role.OWNER
        and not Membership.objects.filter(
            organization=organization, user=actor, role=Membership.Role.OWNER
        ).exists()
    ):
        raise NotAllowed("Only owners can add owners.")
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise AlreadyMember(email=user.email)
    return Membership.objects.create(
        organization=organization,
        user=user,
        role=role,
        monthly_spend_limit_micro=_limit_micro(monthly_spend_limit_credits),
    )


@transaction.atomic
def membership_update(
    *,
    membership: Membership,
    actor: User,
    role: str | None = None,
    monthly_spend_limit_credits: object = ...,
) -> Membership:
    """Change a member's role or monthly limit (``None`` removes the limit)."""
    _require_manager(organization=membership.organization, actor=actor)
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if role is not None and role != membership.role:
        if role not in Membership.Role.values:
            raise NotAllowed("Unknown role.", role=role)
        actor_is_owner = Membership.objects.filter(
            organization=membership.organization_id, user=actor, role=Membership.Role.OWNER
        ).exists()
        if Membership.Role.OWNER in (role, membership.role) and not actor_is_owner:
            raise NotAllowed("Only owners can grant or take away ownership.")
        if membership.role == Membership.Role.OWNER:
            owners = Membership.objects.select_for_update().filter(
                organization=membership.organization_id, role=Membership.Role.OWNER
            )
            if len(owners) <= 1:
                raise LastOwner()
        membership.role = role
    if monthly_spend_limit_credits is not ...:
        membership.monthly_spend_limit_micro = _limit_micro(monthly_spend_limit_credits)
    membership.save(update_fields=["role", "monthly_spend_limit_micro"])
    return membership
