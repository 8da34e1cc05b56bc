"""Emailed invitations to join an organization: for people without an account yet,
accepted once, by the invited address, before they expire; only a hash is stored."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts import services
from accounts.errors import (
    AlreadyMember,
    InvitationForAnotherEmail,
    InvitationNotFound,
    InvitationUnusable,
    NotAllowed,
)
from accounts.models import Invitation, Membership, User
from tests.factories import OrganizationFactory, UserFactory
from tests.helpers import micro

pytestmark = pytest.mark.django_db(transaction=True)  # the email is sent after commit


def _invite(owner: User, email: str = "new.person@example.com", **kwargs: object) -> str:
    organization = Membership.objects.get(user=owner).organization
    _, secret = services.invitation_create(
        organization=organization, email=email, actor=owner, **kwargs
    )
    return secret


def _link(message: mail.EmailMessage) -> str:
    found = re.search(r"https?://\S+/accounts/invitations/(\S+)/", message.body)
    assert found is not None, message.body
    return f"/accounts/invitations/{found.group(1)}/"


def test_a_new_person_signs_up_through_the_emailed_link_and_joins() -> None:
    owner = UserFactory()
    organization = OrganizationFactory(owner=owner)
    secret = _invite(
        owner, "New.Person@Example.com", role="admin", monthly_spend_limit_credits="25"
    )
    (message,) = mail.outbox
    assert message.to == ["new.person@example.com"]
    link = _link(message)
    assert secret in link
    # Only the hash is stored.
    invitation = Invitation.objects.get()
    assert secret not in (invitation.secret_hash, invitation.email)

    client = Client()
    page = client.get(link)
    assert page.status_code == 200 and "create an account" in page.content.decode()
    signed_up = client.post(
        f"/accounts/signup/?next={link}",
        {"email": "new.person@example.com", "password": "a-long-unusual-passphrase", "next": link},
    )
    assert signed_up["Location"] == link
    joined = client.post(link)
    assert joined.status_code == 302
    assert joined["Location"] == f"/console/organizations/{organization.slug}/"
    membership = Membership.objects.get(
        organization=organization, user__email="new.person@example.com"
    )
    assert (membership.role, membership.monthly_spend_limit_micro) == ("admin", micro("25"))
    invitation.refresh_from_db()
    assert invitation.accepted_by == membership.user and invitation.accepted_at is not None
    # The link works once.
    again = client.post(link)
    assert again.status_code == 410
    assert Membership.objects.filter(organization=organization).count() == 2


def test_only_the_invited_address_can_accept() -> None:
    owner = UserFactory()
    organization = OrganizationFactory(owner=owner)
    secret = _invite(owner, "invited@example.com")
    stranger = UserFactory(email="stranger@example.com")
    with pytest.raises(InvitationForAnotherEmail):
        services.invitation_accept(secret=secret, user=stranger)
    client = Client()
    client.force_login(stranger)
    response = client.post(f"/accounts/invitations/{secret}/")
    assert response.status_code == 403
    assert "another email address" in response.content.decode()
    assert not Membership.objects.filter(organization=organization, user=stranger).exists()
    assert Invitation.objects.get().accepted_at is None


def test_expired_unknown_and_replaced_links_are_refused() -> None:
    owner = UserFactory()
    OrganizationFactory(owner=owner)
    late = _invite(owner, "late@example.com")
    person = UserFactory(email="late@example.com")
    with pytest.raises(InvitationUnusable):
        services.invitation_accept(
            secret=late, user=person, now=timezone.now() + dt.timedelta(days=8)
        )
    with pytest.raises(InvitationNotFound):
        services.invitation_accept(secret="not-a-real-secret", user=person)
    assert Client().get("/accounts/invitations/not-a-real-secret/").status_code == 404
    newer = _invite(owner, "late@example.com")  # inviting again replaces the first link
    with pytest.raises(InvitationNotFound):
        services.invitation_accept(secret=late, user=person)
    assert services.invitation_accept(secret=newer, user=person).user == person
    assert Membership.objects.filter(user=person).count() == 1


def test_only_managers_invite_and_members_are_not_invited_twice() -> None:
    owner = UserFactory()
    organization = OrganizationFactory(owner=owner)
    member = UserFactory()
    services.membership_add(organization=organization, user=member, actor=owner)
    with pytest.raises(NotAllowed):
        services.invitation_create(organization=organization, email="x@example.com", actor=member)
    with pytest.raises(AlreadyMember):
        services.invitation_create(organization=organization, email=member.email, actor=owner)
    with pytest.raises(NotAllowed):  # admins cannot make owners
        admin = UserFactory()
        services.membership_add(organization=organization, user=admin, actor=owner, role="admin")
        services.invitation_create(
            organization=organization, email="boss@example.com", actor=admin, role="owner"
        )
    assert not Invitation.objects.exists() and not mail.outbox
