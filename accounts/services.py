"""Writes for people and organizations. Every new user and organization gets its wallet in
the same transaction, so no owner ever exists without one."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts import tokens
from accounts.errors import (
    AlreadyMember,
    EmailTaken,
    InvalidCountry,
    InvalidIpRule,
    InvalidLimit,
    InvalidModelRule,
    InvalidQuota,
    InvalidScopes,
    InvalidToken,
    InvalidTokenName,
    InvalidWebhookUrl,
    InvitationForAnotherEmail,
    InvitationNotFound,
    InvitationUnusable,
    IpNotAllowed,
    LastOwner,
    NotAllowed,
    NotAMember,
    OrganizationSlugTaken,
    TokenAlreadyRevoked,
    TokenExpired,
    TokenRevoked,
)
from accounts.models import (
    ApiToken,
    BillingTier,
    Invitation,
    Membership,
    Organization,
    TokenGroup,
    User,
    normalize_email,
)
from config import cached_reads, sql
from wallet import money
from wallet import selectors as wallet_selectors
from wallet import services as wallet_services
from wallet.errors import InvalidAmount, InvalidExpiry

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


def _require_grantable_role(*, organization: Organization, actor: User, role: str) -> None:
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
    _require_grantable_role(organization=organization, actor=actor, role=role)
    return _membership_create(
        organization=organization,
        user=user,
        role=role,
        limit_micro=_limit_micro(monthly_spend_limit_credits),
    )


def _membership_create(
    *, organization: Organization, user: User, role: str, limit_micro: int | None
) -> Membership:
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise AlreadyMember(email=user.email)
    return Membership.objects.create(
        organization=organization, user=user, role=role, monthly_spend_limit_micro=limit_micro
    )


def _invitation_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def invitation_create(
    *,
    organization: Organization,
    email: str,
    actor: User,
    role: str = Membership.Role.MEMBER,
    monthly_spend_limit_credits: object = None,
    now: dt.datetime | None = None,
) -> tuple[Invitation, str]:
    """Invite ``email`` to ``organization`` (owners and admins; only owners invite owners)
    and email the link, once the invitation is committed. Returns the invitation and the
    link's secret, which is not stored (only its hash). Inviting the same address again
    replaces the open invitation, so only the newest link works."""
    now = now or timezone.now()
    email = normalize_email(email).lower()
    limit = _limit_micro(monthly_spend_limit_credits)
    with transaction.atomic():
        _require_grantable_role(organization=organization, actor=actor, role=role)
        if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
            raise AlreadyMember(email=email)
        Invitation.objects.filter(
            organization=organization, email=email, accepted_at__isnull=True
        ).delete()
        secret = secrets.token_urlsafe(32)
        invitation = Invitation.objects.create(
            organization=organization,
            email=email,
            role=role,
            monthly_spend_limit_micro=limit,
            invited_by=actor,
            secret_hash=_invitation_hash(secret),
            created_at=now,
            expires_at=now + dt.timedelta(days=settings.ORGANIZATION_INVITATION_DAYS),
        )
        transaction.on_commit(functools.partial(_invitation_send, invitation, secret))
    return invitation, secret


def _invitation_send(invitation: Invitation, secret: str) -> None:
    link = f"{settings.SITE_URL.rstrip('/')}/accounts/invitations/{secret}/"
    inviter = invitation.invited_by.email if invitation.invited_by else "An administrator"
    send_mail(
        subject=f"Join {invitation.organization.name}",
        message=(
            f"{inviter} invited you to join {invitation.organization.name} "
            f"as {invitation.get_role_display().lower()}.\n\n"
            f"Create an account (or sign in) with this email address and open:\n{link}\n\n"
            f"The link works once, until {invitation.expires_at:%Y-%m-%d %H:%M} UTC."
        ),
        from_email=None,
        recipient_list=[invitation.email],
    )


def invitation_get(*, secret: str) -> Invitation:
    invitation = (
        Invitation.objects.select_related("organization")
        .filter(secret_hash=_invitation_hash(secret))
        .first()
    )
    if invitation is None:
        raise InvitationNotFound()
    return invitation


@transaction.atomic
def invitation_accept(*, secret: str, user: User, now: dt.datetime | None = None) -> Membership:
    """Join the organization of the invitation behind ``secret``: once, before it expires,
    and only as the account of the invited address."""
    now = now or timezone.now()
    invitation = (
        Invitation.objects.select_for_update()
        .select_related("organization")
        .filter(secret_hash=_invitation_hash(secret))
        .first()
    )
    if invitation is None:
        raise InvitationNotFound()
    if invitation.accepted_at is not None or invitation.expires_at <= now:
        raise InvitationUnusable()
    if user.email.lower() != invitation.email:
        raise InvitationForAnotherEmail()
    membership = _membership_create(
        organization=invitation.organization,
        user=user,
        role=invitation.role,
        limit_micro=invitation.monthly_spend_limit_micro,
    )
    invitation.accepted_at, invitation.accepted_by = now, user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    return membership


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


# --- Billing tiers and token groups ---------------------------------------------------


def billing_tier_create(*, name: str, rate: object, description: str = "") -> BillingTier:
    """A rate multiplier (DESIGN.md ``tier_rate``). Refuses rates that are not > 0."""
    parsed = money.to_decimal(rate, field="rate")
    if parsed <= 0 or parsed.as_tuple().exponent < -4:  # type: ignore[operator]
        raise InvalidAmount("The rate must be positive with at most 4 decimals.", rate=str(rate))
    tier, _ = BillingTier.objects.update_or_create(
        name=name.strip(), defaults={"rate": parsed, "description": description}
    )
    return tier


@transaction.atomic
def token_group_create(
    *,
    name: str,
    tier: BillingTier,
    allowed_models: Iterable[str] = (),
    is_default: bool = False,
    description: str = "",
) -> TokenGroup:
    """Create (or update, by name) a token group. Making it the default takes the flag from
    the previous default in the same transaction."""
    if is_default:
        TokenGroup.objects.select_for_update().filter(is_default=True).exclude(
            name=name.strip()
        ).update(is_default=False)
    group, _ = TokenGroup.objects.update_or_create(
        name=name.strip(),
        defaults={
            "tier": tier,
            "allowed_models": _clean_models(allowed_models),
            "is_default": is_default,
            "description": description,
        },
    )
    return group


def token_group_default() -> TokenGroup:
    """The group new tokens join. A migration creates ``default`` (tier ``standard``, rate
    1.0); if no group carries the flag any more, that one is made again rather than leaving
    tokens without a group."""
    group = TokenGroup.objects.filter(is_default=True).select_related("tier").first()
    if group is not None:
        return group
    tier = BillingTier.objects.filter(name="standard").first() or billing_tier_create(
        name="standard", rate="1.0", description="List price"
    )
    return token_group_create(name="default", tier=tier, is_default=True)


# --- API tokens -----------------------------------------------------------------------

_MAX_RULES = 100


def _clean_scopes(scopes: Iterable[str]) -> list[str]:
    cleaned = sorted({str(s).strip().lower() for s in scopes})
    if not cleaned or not set(cleaned) <= set(ApiToken.Scope.values):
        raise InvalidScopes(scopes=list(scopes))
    return cleaned


def _clean_ips(rules: Iterable[str]) -> list[str]:
    cleaned: list[str] = []
    for rule in rules:
        try:
            network = ipaddress.ip_network(str(rule).strip(), strict=False)
        except ValueError as exc:
            raise InvalidIpRule(rule=str(rule)) from exc
        text = str(network) if network.num_addresses > 1 else str(network.network_address)
        if text not in cleaned:
            cleaned.append(text)
    if len(cleaned) > _MAX_RULES:
        raise InvalidIpRule(f"At most {_MAX_RULES} address rules per token.")
    return cleaned


def _clean_models(models_: Iterable[str]) -> list[str]:
    cleaned: list[str] = []
    for model in models_:
        text = str(model).strip()
        if not text or len(text) > 100 or any(c.isspace() for c in text):
            raise InvalidModelRule(model=text)
        if text not in cleaned:
            cleaned.append(text)
    if len(cleaned) > _MAX_RULES:
        raise InvalidModelRule(f"At most {_MAX_RULES} model rules.")
    return cleaned


def _clean_quota(quota_credits: object) -> int | None:
    if quota_credits is None or quota_credits == "":
        return None
    try:
        return money.credits_to_micro(quota_credits, allow_zero=True, field="quota")
    except InvalidAmount as exc:
        raise InvalidQuota(quota=str(quota_credits)) from exc


def _clean_budget(period: str, budget_credits: object) -> tuple[str, int | None]:
    """A periodic budget is a period and an amount, both or neither."""
    period = (period or "").strip().lower()
    if period not in ApiToken.BudgetPeriod.values:
        raise InvalidLimit(
            "The budget period is daily, weekly or monthly.", field="budget_period", value=period
        )
    if budget_credits is None or budget_credits == "":
        if period:
            raise InvalidLimit("A budget period needs a budget.", field="budget")
        return "", None
    if not period:
        raise InvalidLimit("A budget needs a period (daily, weekly, monthly).", field="budget")
    try:
        return period, money.credits_to_micro(budget_credits, allow_zero=True, field="budget")
    except InvalidAmount as exc:
        raise InvalidLimit(exc.message, field="budget", value=str(budget_credits)) from exc


_MAX_RATE = {"rate_limit_rpm": 1_000_000_000, "rate_limit_tpm": 10**15}


def _clean_rate(value: object, field: str) -> int | None:
    if value is None or value == "":
        return None
    highest = _MAX_RATE[field]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= highest:
        raise InvalidLimit(f"{field} is a whole number from 1 to {highest}, or empty.", field=field)
    return value


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise InvalidTokenName()
    return name


@transaction.atomic
def api_token_create(
    *,
    user: User,
    name: str,
    scopes: Iterable[str],
    group: TokenGroup | None = None,
    organization: Organization | None = None,
    quota_credits: object = None,
    expires_at: dt.datetime | None = None,
    allowed_models: Iterable[str] = (),
    allowed_ips: Iterable[str] = (),
    budget_period: str = "",
    budget_credits: object = None,
    rate_limit_rpm: int | None = None,
    rate_limit_tpm: int | None = None,
    log_content: bool = False,
    now: dt.datetime | None = None,
) -> tuple[ApiToken, str]:
    """Create a token and return it with its secret, which is never stored or shown again.

    The token spends from ``user``'s wallet, or from ``organization``'s pool when given
    (``user`` must be a member; the membership's monthly spend limit then applies too).
    ``budget_period`` (daily, weekly, monthly: UTC calendar periods) and
    ``budget_credits`` cap what it may spend per period; ``rate_limit_rpm`` /
    ``rate_limit_tpm`` cap its requests and tokens per minute; ``log_content`` keeps its
    prompts and responses.
    """
    now = now or timezone.now()
    if expires_at is not None and expires_at <= now:
        raise InvalidExpiry(expires_at=expires_at.isoformat())
    membership = None
    if organization is not None:
        membership = Membership.objects.filter(organization=organization, user=user).first()
        if membership is None:
            raise NotAMember(organization=organization.slug)
        wallet = wallet_selectors.wallet_get_for_organization(organization=organization)
    else:
        wallet = wallet_selectors.wallet_get_for_user(user=user)
    fields = {
        "user": user,
        "wallet": wallet,
        "organization": organization,
        "membership": membership,
        "name": _clean_name(name),
        "group": group or token_group_default(),
        "scopes": _clean_scopes(scopes),
        "quota_micro": _clean_quota(quota_credits),
        "expires_at": expires_at,
        "allowed_models": _clean_models(allowed_models),
        "allowed_ips": _clean_ips(allowed_ips),
        "rate_limit_rpm": _clean_rate(rate_limit_rpm, "rate_limit_rpm"),
        "rate_limit_tpm": _clean_rate(rate_limit_tpm, "rate_limit_tpm"),
        "log_content": bool(log_content),
        "created_at": now,
    }
    fields["budget_period"], fields["budget_micro"] = _clean_budget(budget_period, budget_credits)
    for _attempt in range(5):  # a 48-bit prefix collides about never; the index decides
        secret = tokens.new_secret()
        try:
            with transaction.atomic():
                token = ApiToken.objects.create(
                    prefix=secret.prefix, secret_hash=secret.hash, **fields
                )
        except IntegrityError:
            continue
        return token, secret.full
    raise RuntimeError("Could not find a free token prefix.")


_UNCHANGED: Any = object()


@transaction.atomic
def api_token_update(
    *,
    token: ApiToken,
    name: str = _UNCHANGED,
    scopes: Iterable[str] = _UNCHANGED,
    group: TokenGroup = _UNCHANGED,
    quota_credits: object = _UNCHANGED,
    expires_at: dt.datetime | None = _UNCHANGED,
    allowed_models: Iterable[str] = _UNCHANGED,
    allowed_ips: Iterable[str] = _UNCHANGED,
    budget_period: str = _UNCHANGED,
    budget_credits: object = _UNCHANGED,
    rate_limit_rpm: int | None = _UNCHANGED,
    rate_limit_tpm: int | None = _UNCHANGED,
    log_content: bool = _UNCHANGED,
) -> ApiToken:
    """Change a token's settings (``quota_credits=None`` removes the quota, and
    ``budget_period=""`` with ``budget_credits=None`` the periodic budget). The secret and
    the wallet cannot change: rotate or create another token for that. What was spent in
    the current period is kept when the budget changes."""
    locked = ApiToken.objects.select_for_update().get(pk=token.pk)
    changes: dict[str, Any] = {}
    if name is not _UNCHANGED:
        changes["name"] = _clean_name(name)
    if scopes is not _UNCHANGED:
        changes["scopes"] = _clean_scopes(scopes)
    if group is not _UNCHANGED:
        changes["group"] = group
    if quota_credits is not _UNCHANGED:
        changes["quota_micro"] = _clean_quota(quota_credits)
    if expires_at is not _UNCHANGED:
        changes["expires_at"] = expires_at
    if allowed_models is not _UNCHANGED:
        changes["allowed_models"] = _clean_models(allowed_models)
    if allowed_ips is not _UNCHANGED:
        changes["allowed_ips"] = _clean_ips(allowed_ips)
    if budget_period is not _UNCHANGED or budget_credits is not _UNCHANGED:
        period = locked.budget_period if budget_period is _UNCHANGED else budget_period
        amount: object = budget_credits
        if budget_credits is _UNCHANGED:
            amount = (
                None if locked.budget_micro is None else money.micro_to_credits(locked.budget_micro)
            )
        changes["budget_period"], changes["budget_micro"] = _clean_budget(period, amount)
    if rate_limit_rpm is not _UNCHANGED:
        changes["rate_limit_rpm"] = _clean_rate(rate_limit_rpm, "rate_limit_rpm")
    if rate_limit_tpm is not _UNCHANGED:
        changes["rate_limit_tpm"] = _clean_rate(rate_limit_tpm, "rate_limit_tpm")
    if log_content is not _UNCHANGED:
        changes["log_content"] = bool(log_content)
    for field, value in changes.items():
        setattr(locked, field, value)
    if changes:
        locked.save(update_fields=list(changes))
    return locked


def api_token_revoke(*, token: ApiToken, now: dt.datetime | None = None) -> ApiToken:
    """Stop a token from working, for good. Revoking a revoked token changes nothing.
    Authorizations it already holds can still be captured or released by staff jobs;
    holds nobody settles expire as usual."""
    now = now or timezone.now()
    ApiToken.objects.filter(pk=token.pk, status=ApiToken.Status.ACTIVE).update(
        status=ApiToken.Status.REVOKED, revoked_at=now
    )
    return ApiToken.objects.get(pk=token.pk)


def api_tokens_revoke_for_membership(
    *, membership: Membership, now: dt.datetime | None = None
) -> int:
    """Revoke every token spending from an organization through ``membership`` (call it
    when a member leaves). Returns how many were revoked."""
    return ApiToken.objects.filter(membership=membership, status=ApiToken.Status.ACTIVE).update(
        status=ApiToken.Status.REVOKED, revoked_at=now or timezone.now()
    )


@transaction.atomic
def api_token_rotate(*, token: ApiToken, now: dt.datetime | None = None) -> tuple[ApiToken, str]:
    """Give the token a new secret (and prefix); the old secret stops working at once.
    Quota, usage and settings are kept."""
    locked = ApiToken.objects.select_for_update().get(pk=token.pk)
    if locked.status != ApiToken.Status.ACTIVE:
        raise TokenAlreadyRevoked(token_id=locked.pk)
    for _attempt in range(5):
        secret = tokens.new_secret()
        try:
            with transaction.atomic():
                ApiToken.objects.filter(pk=locked.pk).update(
                    prefix=secret.prefix, secret_hash=secret.hash, rotated_at=now or timezone.now()
                )
        except IntegrityError:
            continue
        return ApiToken.objects.get(pk=locked.pk), secret.full
    raise RuntimeError("Could not find a free token prefix.")


@functools.lru_cache(maxsize=1024)
def _networks(rules: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(rule, strict=False) for rule in rules)


def api_token_ip_allowed(*, token: ApiToken, client_ip: str) -> bool:
    if not token.allowed_ips:
        return True
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(
        address.version == network.version and address in network
        for network in _networks(tuple(token.allowed_ips))
    )


# Column lists come from the models' metadata, never from input.
_TOKEN_BY_PREFIX = (
    f"SELECT {sql.columns(ApiToken, 't')}, {sql.columns(User, 'u')}, "  # noqa: S608
    f"{sql.columns(TokenGroup, 'g')}, {sql.columns(BillingTier, 'b')}, "
    f'{sql.columns(Membership, "m")}, w."min_balance_micro" '
    'FROM "accounts_apitoken" t '
    'JOIN "accounts_user" u ON u."id" = t."user_id" '
    'JOIN "accounts_tokengroup" g ON g."id" = t."group_id" '
    'JOIN "accounts_billingtier" b ON b."id" = g."tier_id" '
    'LEFT JOIN "accounts_membership" m ON m."id" = t."membership_id" '
    'JOIN "wallet_wallet" w ON w."id" = t."wallet_id" '
    'WHERE t."prefix" = %s'
)


_TOUCH = (
    'UPDATE "accounts_apitoken" SET "last_used_at" = %s WHERE "id" = %s '
    'AND ("last_used_at" IS NULL OR "last_used_at" <= %s)'
)


# The same, with the ``accounts_token_state`` digest of what it read (PostgreSQL only).
_TOKEN_BY_PREFIX_WITH_STATE = _TOKEN_BY_PREFIX.replace(
    " FROM ", ', accounts_token_state(t."id") FROM ', 1
)


def _token_by_prefix(prefix: str) -> ApiToken | None:
    """The token with its owner, group, tier, membership and its wallet's minimum balance,
    in one indexed query (the equivalent of ``select_related``, without compiling a query
    on every request)."""
    row = sql.fetch_one(_TOKEN_BY_PREFIX, [prefix])
    return None if row is None else _token_from_row(row)


def _token_from_row(row: tuple[Any, ...]) -> ApiToken:
    at = 0
    token = sql.from_row(ApiToken, row, at)
    at += sql.width(ApiToken)
    user = sql.from_row(User, row, at)
    at += sql.width(User)
    group = sql.from_row(TokenGroup, row, at)
    at += sql.width(TokenGroup)
    group._state.fields_cache["tier"] = sql.from_row(BillingTier, row, at)
    at += sql.width(BillingTier)
    membership = sql.from_row(Membership, row, at) if row[at] is not None else None
    at += sql.width(Membership)
    token._state.fields_cache.update(user=user, group=group, membership=membership)
    # The wallet's own minimum balance, read here so authorizing reads no more rows.
    token.wallet_min_balance = (row[at],)
    return token


@dataclass(slots=True)
class _KeptToken:
    row: tuple[Any, ...]  # as read by _TOKEN_BY_PREFIX_WITH_STATE (its digest last)
    last_used_at: dt.datetime | None  # moves on as the process writes it


def api_token_authenticate(
    *,
    secret: str,
    client_ip: str,
    now: dt.datetime | None = None,
    keep: Callable[[ApiToken], bool] | None = None,
) -> ApiToken:
    """The active token for a presented secret, with its group, tier and owner loaded.

    One indexed lookup by prefix, then a constant-time comparison of hashes. Refuses with
    ``InvalidToken``, ``TokenRevoked``, ``TokenExpired`` (401) or ``IpNotAllowed`` (403).
    ``last_used_at`` is written at most once per ``API_TOKEN_LAST_USED_INTERVAL`` seconds,
    so the hot path does not write the token row on every request.

    ``keep`` (the metering fast path's): tokens it accepts are kept in the process's memo
    of tokens, with their state digest (``accounts_token_state``), and read from it while
    the request is an attempt that may read kept copies (``config.cached_reads``); such a
    token carries ``cached_state`` and the metering functions check it.
    """
    prefix = tokens.parse_prefix(secret)
    if prefix is None:
        raise InvalidToken()
    now = now or timezone.now()
    kept = None
    if keep is not None and cached_reads.keeping():
        kept = cached_reads.memo("tokens")
    token: ApiToken | None = None
    entry: _KeptToken | None = None
    if kept is not None and cached_reads.reading_cached():
        entry = kept.get(prefix)
        if entry is not None:
            token = _token_from_row(entry.row)
            if tokens.secret_matches(secret, token.secret_hash):
                token.last_used_at = entry.last_used_at
                token.cached_state = entry.row[-1]
                cached_reads.used()
            else:  # another secret for this prefix (a rotation): ask the database
                token = entry = None
    row = None
    if token is None:
        query = _TOKEN_BY_PREFIX_WITH_STATE if kept is not None else _TOKEN_BY_PREFIX
        row = sql.fetch_one(query, [prefix])
        token = None if row is None else _token_from_row(row)
        if token is None or not tokens.secret_matches(secret, token.secret_hash):
            if kept is not None:
                kept.evict(prefix)
            raise InvalidToken()
    try:
        _require_usable(token, client_ip, now)
    except Exception:
        if kept is not None:
            kept.evict(prefix)
        cached_reads.require_uncached()  # refused on what may be out of date: read again
        raise
    _touch(token, now)
    if entry is not None:
        entry.last_used_at = token.last_used_at
    elif kept is not None and row is not None:
        if keep is not None and keep(token):
            kept.put(prefix, _KeptToken(row, token.last_used_at))
        else:
            kept.evict(prefix)
    return token


def _require_usable(token: ApiToken, client_ip: str, now: dt.datetime) -> None:
    """The checks after the secret's: status, owner, membership, expiry, address."""
    if token.status != ApiToken.Status.ACTIVE:
        raise TokenRevoked()
    if token.organization_id is not None and token.membership_id is None:
        raise TokenRevoked("The owner of this token is no longer a member of the organization.")
    if not token.user.is_active:
        raise TokenRevoked("The owner of this token is deactivated.")
    if token.expires_at is not None and token.expires_at <= now:
        raise TokenExpired()
    if not api_token_ip_allowed(token=token, client_ip=client_ip):
        raise IpNotAllowed(client_ip=client_ip)


def _touch(token: ApiToken, now: dt.datetime) -> None:
    interval = dt.timedelta(seconds=settings.API_TOKEN_LAST_USED_INTERVAL)
    if token.last_used_at is None or token.last_used_at <= now - interval:
        sql.execute(_TOUCH, [now, token.pk, now - interval])
        token.last_used_at = now


# --- Spending counters (written by usage.services inside its metering transaction) ----


def api_token_lock(*, token_id: int) -> ApiToken:
    """Lock a token row for a cap check (global lock order: token first)."""
    return ApiToken.objects.select_for_update().get(pk=token_id)


def membership_lock(*, membership_id: int) -> Membership:
    """Lock a membership row for a cap check (lock order: after the token)."""
    return Membership.objects.select_for_update().get(pk=membership_id)


# The periodic budget's count starts again when a charge falls in a later period than
# the one counted; a charge dated in an earlier period counts in the current one.
_SPEND_ADD = (
    'UPDATE "accounts_apitoken" SET "used_micro" = "used_micro" + %s, '
    '"budget_spent_micro" = CASE WHEN "budget_period" = \'\' THEN 0 '
    'WHEN "budget_period_start" IS NULL OR "budget_period_start" < (CASE "budget_period" '
    "WHEN 'daily' THEN %s WHEN 'weekly' THEN %s ELSE %s END) THEN %s "
    'ELSE "budget_spent_micro" + %s END, '
    '"budget_period_start" = CASE WHEN "budget_period" = \'\' THEN NULL '
    'WHEN "budget_period_start" IS NULL OR "budget_period_start" < (CASE "budget_period" '
    "WHEN 'daily' THEN %s WHEN 'weekly' THEN %s ELSE %s END) THEN (CASE \"budget_period\" "
    "WHEN 'daily' THEN %s WHEN 'weekly' THEN %s ELSE %s END) "
    'ELSE "budget_period_start" END '
    'WHERE "id" = %s'
)
_MEMBER_SPEND_ADD = (
    'UPDATE "accounts_membership" SET "spend_month_micro" = CASE WHEN "spend_month" = %s '
    'THEN "spend_month_micro" + %s ELSE %s END, "spend_month" = %s WHERE "id" = %s'
)


def api_token_spend_add(*, token_id: int, amount: int, now: dt.datetime) -> None:
    """Add ``amount`` µcr (negative to correct) to the token's ``used_micro`` and to its
    budget count for ``now``'s period; takes the token's row lock if the caller does not
    hold it yet."""
    starts = budget_period_starts(now)
    sql.execute(_SPEND_ADD, [amount, *starts, max(amount, 0), amount, *starts, *starts, token_id])


def budget_period_starts(now: dt.datetime) -> list[dt.date]:
    """The first days of ``now``'s daily, weekly and monthly budget periods, in that order
    (a token's count starts again when its period's first day moves)."""
    return [budget_period_bounds(p, now)[0] for p in ("daily", "weekly", "monthly")]


def budget_period_bounds(period: str, now: dt.datetime) -> tuple[dt.date, dt.datetime]:
    """The UTC calendar period of ``period`` (daily, weekly from Monday, monthly) that
    contains ``now``: its first day, and the instant the next one starts (the reset)."""
    day = now.astimezone(dt.UTC).date()
    if period == ApiToken.BudgetPeriod.DAILY:
        start, end = day, day + dt.timedelta(days=1)
    elif period == ApiToken.BudgetPeriod.WEEKLY:
        start = day - dt.timedelta(days=day.weekday())
        end = start + dt.timedelta(days=7)
    elif period == ApiToken.BudgetPeriod.MONTHLY:
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"no budget period {period!r}")
    return start, dt.datetime.combine(end, dt.time(0), tzinfo=dt.UTC)


def api_token_budget_spent(*, token: ApiToken, now: dt.datetime) -> int:
    """µcr charged to ``token`` in ``now``'s budget period (0 once a new one started)."""
    if not token.budget_period or token.budget_period_start is None:
        return 0
    start, _ = budget_period_bounds(token.budget_period, now)
    return token.budget_spent_micro if token.budget_period_start >= start else 0


def organization_set_content_logging(
    *, organization: Organization, actor: User, enabled: bool
) -> Organization:
    """Turn content logging on or off for every token of the organization (owners and
    admins only). Content already logged stays until the retention purge."""
    _require_manager(organization=organization, actor=actor)
    Organization.objects.filter(pk=organization.pk).update(log_content=enabled)
    organization.log_content = enabled
    return organization


def month_start(now: dt.datetime) -> dt.date:
    """First day of ``now``'s calendar month in UTC (member limits are per UTC month)."""
    return now.astimezone(dt.UTC).date().replace(day=1)


def membership_spend_add(*, membership_id: int, amount: int, now: dt.datetime) -> None:
    """Add ``amount`` µcr to what the member spent in ``now``'s month, starting the count
    again when a new month begins."""
    month = month_start(now)
    sql.execute(_MEMBER_SPEND_ADD, [month, amount, max(amount, 0), month, membership_id])


_MEMBER_SPEND_CORRECT = (
    'UPDATE "accounts_membership" SET "spend_month_micro" = GREATEST("spend_month_micro" + %s, 0) '
    'WHERE "id" = %s AND "spend_month" = %s'
)


def membership_spend_correct(*, membership_id: int, amount: int, month_of: dt.datetime) -> None:
    """Correct by ``amount`` µcr what the member spent in the month of ``month_of`` (a staff
    correction of a charge made then). Nothing changes once the member's count has moved on
    to a later month: that month's limit is spent and gone."""
    sql.execute(_MEMBER_SPEND_CORRECT, [amount, membership_id, month_start(month_of)])


def model_rules_clean(rules: Iterable[str]) -> list[str]:
    """Validate model allow-list entries (ids or shell patterns), e.g. for admin forms."""
    return _clean_models(rules)


def ip_rules_clean(rules: Iterable[str]) -> list[str]:
    """Validate and normalize IP / CIDR allow-list entries."""
    return _clean_ips(rules)


@transaction.atomic
def token_group_save(*, group: TokenGroup) -> TokenGroup:
    """Save an edited group (staff). Making it the default takes the flag from the previous
    default in the same transaction, so exactly one group stays the default."""
    group.allowed_models = _clean_models(group.allowed_models or [])
    if group.is_default:
        TokenGroup.objects.select_for_update().filter(is_default=True).exclude(pk=group.pk).update(
            is_default=False
        )
    group.save()
    return group


def user_update_notifications(
    *, user: User, notification_email: str = "", alert_webhook_url: str = ""
) -> User:
    """Where the user's alerts go. Empty email means the log-in email; the webhook must be
    an https URL (http only to localhost, for development)."""
    email = normalize_email(notification_email) if notification_email else ""
    url = (alert_webhook_url or "").strip()
    if url and not (
        url.startswith("https://") or url.startswith(("http://localhost", "http://127.0.0.1"))
    ):
        raise InvalidWebhookUrl(url=url)
    User.objects.filter(pk=user.pk).update(notification_email=email, alert_webhook_url=url)
    user.notification_email, user.alert_webhook_url = email, url
    return user
