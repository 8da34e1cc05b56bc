from __future__ import annotations

import pytest

from accounts import services
from accounts.errors import (
    AlreadyMember,
    EmailTaken,
    InvalidCountry,
    LastOwner,
    NotAllowed,
    OrganizationSlugTaken,
)
from accounts.models import Membership, Organization, User
from tests.factories import OrganizationFactory, UserFactory
from wallet.errors import InvalidAmount
from wallet.models import Wallet

pytestmark = pytest.mark.django_db


def test_user_create_normalises_email_and_makes_a_wallet() -> None:
    user = services.user_create(email="  Mixed@Case.COM ", password="x" * 12, country="fr")
    assert user.email == "mixed@case.com"
    assert user.country == "FR"
    assert Wallet.objects.filter(user=user, balance=0).exists()


def test_user_create_refuses_duplicates_and_bad_countries() -> None:
    services.user_create(email="a@example.com", password=None)
    with pytest.raises(EmailTaken) as error:
        services.user_create(email="A@EXAMPLE.COM", password=None)
    assert error.value.status_code == 409
    with pytest.raises(InvalidCountry):
        services.user_create(email="b@example.com", password=None, country="France")
    assert User.objects.count() == 1
    assert Wallet.objects.count() == 1


def test_organization_create_makes_owner_and_pool_wallet(user: User) -> None:
    org = services.organization_create(name="Acme Labs", owner=user)
    assert org.slug == "acme-labs"
    assert Membership.objects.get(organization=org, user=user).role == "owner"
    assert Wallet.objects.filter(organization=org).exists()
    with pytest.raises(OrganizationSlugTaken):
        services.organization_create(name="Acme  Labs", owner=user)
    with pytest.raises(OrganizationSlugTaken):
        services.organization_create(name="!!!", owner=user)
    assert Organization.objects.count() == 1


def test_members_are_managed_by_owners_and_admins_only(user: User) -> None:
    org = OrganizationFactory(owner=user)
    admin, member, outsider = UserFactory(), UserFactory(), UserFactory()
    services.membership_add(organization=org, user=admin, actor=user, role="admin")
    membership = services.membership_add(
        organization=org, user=member, actor=admin, monthly_spend_limit_credits="25.5"
    )
    assert membership.monthly_spend_limit_micro == 25_500_000
    with pytest.raises(NotAllowed):
        services.membership_add(organization=org, user=outsider, actor=member)
    with pytest.raises(NotAllowed):
        services.membership_add(organization=org, user=outsider, actor=admin, role="owner")
    with pytest.raises(AlreadyMember):
        services.membership_add(organization=org, user=member, actor=user)
    with pytest.raises(InvalidAmount):
        services.membership_add(
            organization=org, user=outsider, actor=user, monthly_spend_limit_credits="-1"
        )
    assert org.memberships.count() == 3


def test_membership_update_limits_and_roles(user: User) -> None:
    org = OrganizationFactory(owner=user)
    admin, member = UserFactory(), UserFactory()
    services.membership_add(organization=org, user=admin, actor=user, role="admin")
    membership = services.membership_add(organization=org, user=member, actor=user)
    services.membership_update(membership=membership, actor=admin, monthly_spend_limit_credits="10")
    assert Membership.objects.get(pk=membership.pk).monthly_spend_limit_micro == 10_000_000
    services.membership_update(membership=membership, actor=admin, monthly_spend_limit_credits=None)
    assert Membership.objects.get(pk=membership.pk).monthly_spend_limit_micro is None
    with pytest.raises(NotAllowed):
        services.membership_update(membership=membership, actor=admin, role="owner")
    with pytest.raises(NotAllowed):
        services.membership_update(
            membership=membership, actor=member, monthly_spend_limit_credits="1"
        )
    owner_membership = Membership.objects.get(organization=org, user=user)
    with pytest.raises(LastOwner):
        services.membership_update(membership=owner_membership, actor=user, role="member")


def test_notification_settings(user: User) -> None:
    from accounts.errors import InvalidWebhookUrl

    assert user.alert_email == user.email
    services.user_update_notifications(
        user=user,
        notification_email=" Ops@Example.com ",
        alert_webhook_url="https://hooks.example.com/x",
    )
    user.refresh_from_db()
    assert (user.alert_email, user.alert_webhook_url) == (
        "ops@example.com",
        "https://hooks.example.com/x",
    )
    with pytest.raises(InvalidWebhookUrl):
        services.user_update_notifications(user=user, alert_webhook_url="http://evil.example.com/")
    user.refresh_from_db()
    assert user.alert_webhook_url == "https://hooks.example.com/x"
