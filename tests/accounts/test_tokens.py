"""API tokens: secrets, storage, validation, rotation, revocation, the command."""

from __future__ import annotations

import datetime as dt
import hashlib
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from accounts import services, tokens
from accounts.errors import (
    InvalidIpRule,
    InvalidModelRule,
    InvalidQuota,
    InvalidScopes,
    InvalidToken,
    IpNotAllowed,
    NotAMember,
    TokenAlreadyRevoked,
    TokenExpired,
    TokenRevoked,
)
from accounts.models import ApiToken, Organization, TokenGroup, User
from tests.factories import UserFactory
from wallet.errors import InvalidExpiry
from wallet.models import Wallet

pytestmark = pytest.mark.django_db


def create(user: User, **kwargs) -> tuple[ApiToken, str]:  # type: ignore[no-untyped-def]
    kwargs.setdefault("scopes", ["read"])
    return services.api_token_create(user=user, name="t", **kwargs)


def test_secret_format_and_only_a_hash_is_stored(user: User) -> None:
    token, secret = create(user)
    assert secret.startswith(f"sk-live-{token.prefix}-")
    body = secret.rsplit("-", 1)[1]
    assert len(token.prefix) == 12 and len(body) == 43 and body.isalnum()
    assert token.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    stored = ApiToken.objects.filter(pk=token.pk).values()[0]
    assert body not in str(stored)
    assert tokens.parse_prefix(secret) == token.prefix


def test_secrets_carry_at_least_128_bits_and_do_not_repeat() -> None:
    # 43 characters of a 62-letter alphabet: 43 x log2(62) ~ 256 bits.
    seen = {tokens.new_secret().full for _ in range(500)}
    assert len(seen) == 500
    assert tokens.SECRET_CHARS * 5.95 >= 128


def test_defaults_personal_wallet_and_default_group(user: User) -> None:
    token, _ = create(user)
    assert token.wallet == Wallet.objects.get(user=user)
    assert token.group == TokenGroup.objects.get(is_default=True)
    assert token.group.tier.rate == 1
    assert (token.quota_micro, token.used_micro, token.status) == (None, 0, "active")


def test_organization_token_spends_from_the_pool(user: User, organization: Organization) -> None:
    token, _ = create(user, organization=organization, quota_credits="12.5")
    assert token.wallet == Wallet.objects.get(organization=organization)
    assert token.membership is not None and token.membership.user == user
    assert token.quota_micro == 12_500_000


def test_only_members_can_spend_from_a_pool(organization: Organization) -> None:
    with pytest.raises(NotAMember):
        create(UserFactory(), organization=organization)
    assert ApiToken.objects.count() == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"scopes": []}, InvalidScopes),
        ({"scopes": ["admin"]}, InvalidScopes),
        ({"allowed_ips": ["10.0.0.300"]}, InvalidIpRule),
        ({"allowed_ips": ["not-an-ip"]}, InvalidIpRule),
        ({"allowed_models": ["has space"]}, InvalidModelRule),
        ({"allowed_models": ["x" * 101]}, InvalidModelRule),
        ({"quota_credits": "-1"}, InvalidQuota),
        ({"quota_credits": "1.0000001"}, InvalidQuota),
        ({"quota_credits": "lots"}, InvalidQuota),
        ({"expires_at": timezone.now() - dt.timedelta(seconds=1)}, InvalidExpiry),
    ],
)
def test_bad_settings_are_refused_and_nothing_is_created(user: User, kwargs, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        create(user, **kwargs)
    assert ApiToken.objects.count() == 0


def test_ip_rules_are_normalized(user: User) -> None:
    token, _ = create(user, allowed_ips=["10.1.2.3/8", "192.168.0.7", "2001:db8::1/64"])
    assert token.allowed_ips == ["10.0.0.0/8", "192.168.0.7", "2001:db8::/64"]


def test_authenticate_checks_hash_status_expiry_and_address(user: User) -> None:
    token, secret = create(user, allowed_ips=["10.0.0.0/8"])
    assert services.api_token_authenticate(secret=secret, client_ip="10.9.9.9") == token
    assert services.api_token_authenticate(secret=secret, client_ip="::ffff:10.1.1.1") == token
    with pytest.raises(IpNotAllowed):
        services.api_token_authenticate(secret=secret, client_ip="11.0.0.1")
    wrong = secret[:-1] + ("a" if secret[-1] != "a" else "b")
    for bad in (wrong, "sk-live-nope", secret + "x", "", "Bearer " + secret):
        with pytest.raises(InvalidToken):
            services.api_token_authenticate(secret=bad, client_ip="10.0.0.1")
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
    with pytest.raises(TokenExpired):
        services.api_token_authenticate(secret=secret, client_ip="10.0.0.1")
    services.api_token_revoke(token=token)
    with pytest.raises(TokenRevoked):
        services.api_token_authenticate(secret=secret, client_ip="10.0.0.1")


def test_deactivated_owner_and_ended_membership_stop_the_token(
    user: User, organization: Organization
) -> None:
    token, secret = create(user, organization=organization)
    services.api_tokens_revoke_for_membership(membership=token.membership)
    with pytest.raises(TokenRevoked):
        services.api_token_authenticate(secret=secret, client_ip="1.2.3.4")
    other, other_secret = create(UserFactory())
    services.user_set_active(user=other.user, is_active=False)
    with pytest.raises(TokenRevoked):
        services.api_token_authenticate(secret=other_secret, client_ip="1.2.3.4")


def test_rotate_replaces_the_secret_and_keeps_the_rest(user: User) -> None:
    token, old = create(user, quota_credits="5")
    ApiToken.objects.filter(pk=token.pk).update(used_micro=7)
    rotated, new = services.api_token_rotate(token=token)
    assert new != old and rotated.pk == token.pk
    assert (rotated.quota_micro, rotated.used_micro) == (5_000_000, 7)
    with pytest.raises(InvalidToken):
        services.api_token_authenticate(secret=old, client_ip="1.2.3.4")
    assert services.api_token_authenticate(secret=new, client_ip="1.2.3.4") == token
    services.api_token_revoke(token=rotated)
    with pytest.raises(TokenAlreadyRevoked):
        services.api_token_rotate(token=rotated)


def test_revoke_is_idempotent(user: User) -> None:
    token, _ = create(user)
    first = services.api_token_revoke(token=token)
    second = services.api_token_revoke(token=token)
    assert first.status == second.status == "revoked"
    assert first.revoked_at == second.revoked_at


def test_update_validates_and_changes_only_what_is_given(user: User) -> None:
    token, _ = create(user, quota_credits="5", allowed_models=["gpt-*"])
    updated = services.api_token_update(token=token, name="renamed", quota_credits=None)
    assert (updated.name, updated.quota_micro) == ("renamed", None)
    assert updated.allowed_models == ["gpt-*"]
    with pytest.raises(InvalidScopes):
        services.api_token_update(token=token, scopes=["root"])
    assert ApiToken.objects.get(pk=token.pk).scopes == ["read"]


def test_last_used_is_written_at_most_once_per_interval(user: User, settings) -> None:  # type: ignore[no-untyped-def]
    settings.API_TOKEN_LAST_USED_INTERVAL = 60
    token, secret = create(user)
    start = timezone.now()
    services.api_token_authenticate(secret=secret, client_ip="1.1.1.1", now=start)
    services.api_token_authenticate(
        secret=secret, client_ip="1.1.1.1", now=start + dt.timedelta(seconds=30)
    )
    assert ApiToken.objects.get(pk=token.pk).last_used_at == start
    later = start + dt.timedelta(seconds=61)
    services.api_token_authenticate(secret=secret, client_ip="1.1.1.1", now=later)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == later


def test_token_group_default_moves(db: None) -> None:
    tier = services.billing_tier_create(name="partner", rate="0.3")
    group = services.token_group_create(name="partners", tier=tier, is_default=True)
    assert list(TokenGroup.objects.filter(is_default=True)) == [group]


def test_create_api_token_command_prints_the_secret_once(user: User, organization) -> None:  # type: ignore[no-untyped-def]
    out, err = StringIO(), StringIO()
    call_command(
        "create_api_token",
        "--email", user.email, "--name", "ci", "--scopes", "metering,read",
        "--quota", "10", "--org", organization.slug, "--models", "gpt-*",
        stdout=out, stderr=err,
    )  # fmt: skip
    secret = out.getvalue().strip()
    token = ApiToken.objects.get(name="ci")
    assert services.api_token_authenticate(secret=secret, client_ip="1.1.1.1") == token
    assert token.scopes == ["metering", "read"] and token.quota_micro == 10_000_000
    assert token.organization == organization and token.allowed_models == ["gpt-*"]
    assert "shown only once" in err.getvalue()


@pytest.mark.parametrize(
    "args",
    [
        ["--email", "nobody@example.com", "--name", "x"],
        ["--name", "x", "--group", "no-such-group"],
        ["--name", "x", "--org", "no-such-org"],
        ["--name", "x", "--scopes", "admin"],
        ["--name", "x", "--quota", "-5"],
    ],
)
def test_create_api_token_command_refuses_bad_input(user: User, args: list[str]) -> None:
    if "--email" not in args:
        args = ["--email", user.email, *args]
    with pytest.raises(CommandError):
        call_command("create_api_token", *args, stdout=StringIO(), stderr=StringIO())
    assert ApiToken.objects.count() == 0
