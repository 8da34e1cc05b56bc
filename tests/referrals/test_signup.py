"""Invite codes and links, and the referral recorded at sign-up (never a reward by itself)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError, transaction
from django.test import Client
from django.utils import timezone

from accounts import services as account_services
from accounts.models import User
from referrals import services
from referrals.errors import (
    AlreadyReferred,
    InviteCodeNotFound,
    ReferralWindowClosed,
    SelfReferral,
)
from referrals.models import Referral, ReferralAccount, ReferralLedgerEntry
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, ledger_state, micro
from tests.referrals.conftest import account, invite, make_rule
from wallet.models import CreditLot, Wallet

pytestmark = pytest.mark.django_db

SIGNUP = {"password": "a-long-unusual-passphrase", "full_name": "New Person"}


def test_every_user_gets_one_short_unguessable_code_on_demand(user, other_user) -> None:
    assert not ReferralAccount.objects.exists()
    mine = services.referral_account_get_or_create(user=user)
    assert services.referral_account_get_or_create(user=user) == mine
    theirs = services.referral_account_get_or_create(user=other_user)
    assert len(mine.code) == 8 and mine.code != theirs.code
    assert set(mine.code) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
    assert services.invite_code_normalize(mine.code.lower()) == mine.code


def test_signing_up_through_the_link_records_the_inviter(client: Client, inviter) -> None:
    rule = make_rule(signup_credits_micro=micro("5"), signup_credits_days=14)
    code = services.referral_account_get_or_create(user=inviter).code
    landing = client.get(f"/r/{code.lower()}")
    assert landing.status_code == 302 and landing["Location"] == "/accounts/signup/"
    assert landing.cookies["invite"]["httponly"]
    response = client.post("/accounts/signup/", {"email": "friend@example.com", **SIGNUP})
    assert response.status_code == 302
    assert response.cookies["invite"].value == ""  # forgotten once used
    friend = User.objects.get(email="friend@example.com")
    referral = Referral.objects.get(invitee=friend)
    assert (referral.inviter, referral.rule, referral.invite_code) == (inviter, rule, code)
    # The invitee's sign-up credits: a promotional lot that expires.
    wallet = Wallet.objects.get(user=friend)
    lot = CreditLot.objects.get(wallet=wallet)
    assert (lot.category, lot.amount) == ("promotional", micro("5"))
    assert lot.expires_at is not None
    assert lot.expires_at - timezone.now() > dt.timedelta(days=13, hours=23)
    assert_ledger_ok(wallet)
    # No reward for a sign-up alone.
    assert account(inviter).balance == 0
    assert not ReferralLedgerEntry.objects.exists()
    assert Wallet.objects.get(user=inviter).balance == 0


def test_the_signed_cookie_alone_is_enough(inviter) -> None:
    make_rule()
    code = services.referral_account_get_or_create(user=inviter).code
    first_visit = Client()
    cookie = first_visit.get(f"/r/{code}").cookies["invite"]
    later = Client()  # a new browser session, the cookie kept
    later.cookies["invite"] = cookie.value
    later.post("/accounts/signup/", {"email": "later@example.com", **SIGNUP})
    assert Referral.objects.get().invitee.email == "later@example.com"


def test_a_forged_cookie_or_unknown_code_records_nothing(inviter) -> None:
    code = services.referral_account_get_or_create(user=inviter).code
    forged = Client()
    forged.cookies["invite"] = code  # unsigned
    forged.post("/accounts/signup/", {"email": "forged@example.com", **SIGNUP})
    unknown = Client()
    response = unknown.get("/r/ZZZZZZZZ")
    assert response.status_code == 302
    unknown.post("/accounts/signup/", {"email": "unknown@example.com", **SIGNUP})
    nonsense = Client()
    assert "invite" not in nonsense.get("/r/not-a-code!").cookies
    plain = Client()
    plain.post("/accounts/signup/", {"email": "plain@example.com", **SIGNUP})
    assert User.objects.filter(email__endswith="@example.com").count() == 4
    assert not Referral.objects.exists()


def test_a_logged_in_visitor_is_not_marked(client: Client, inviter, user) -> None:
    code = services.referral_account_get_or_create(user=inviter).code
    client.force_login(user)
    response = client.get(f"/r/{code}")
    assert response["Location"] == "/"
    assert "invite" not in response.cookies


def test_self_referral_is_refused(inviter) -> None:
    code = services.referral_account_get_or_create(user=inviter).code
    before = ledger_state(Wallet.objects.get(user=inviter))
    with pytest.raises(SelfReferral) as refused:
        services.referral_record_signup(invitee=inviter, invite_code=code)
    assert refused.value.code == "self_referral"
    assert not Referral.objects.exists()
    assert ledger_state(Wallet.objects.get(user=inviter)) == before
    # The database refuses it too.
    with pytest.raises(IntegrityError), transaction.atomic():
        Referral.objects.create(inviter=inviter, invitee=inviter, invite_code=code)


def test_an_account_is_referred_at_most_once(inviter, other_user) -> None:
    make_rule(signup_credits_micro=micro("5"))
    invitee = invite(inviter)
    wallet = Wallet.objects.get(user=invitee)
    before = ledger_state(wallet)
    second = services.referral_account_get_or_create(user=other_user).code
    with pytest.raises(AlreadyReferred) as refused:
        services.referral_record_signup(invitee=invitee, invite_code=second)
    assert refused.value.code == "already_referred"
    with pytest.raises(AlreadyReferred):  # the same inviter again
        services.referral_record_signup(invitee=invitee, invite_code=account(inviter).code)
    assert Referral.objects.filter(invitee=invitee).count() == 1
    assert ledger_state(wallet) == before  # sign-up credits granted once


def test_referrals_are_recorded_at_sign_up_only(inviter) -> None:
    code = services.referral_account_get_or_create(user=inviter).code
    old = UserFactory()
    User.objects.filter(pk=old.pk).update(date_joined=timezone.now() - dt.timedelta(hours=2))
    with pytest.raises(ReferralWindowClosed):
        services.referral_record_signup(invitee=User.objects.get(pk=old.pk), invite_code=code)
    with pytest.raises(InviteCodeNotFound):
        services.referral_record_signup(invitee=UserFactory(), invite_code="ZZZZZZZZ")
    account_services.user_set_active(user=inviter, is_active=False)
    with pytest.raises(InviteCodeNotFound):
        services.referral_record_signup(invitee=UserFactory(), invite_code=code)
    assert not Referral.objects.exists()


def test_without_an_active_rule_there_are_no_signup_credits(inviter) -> None:
    invitee = invite(inviter)
    assert Referral.objects.get(invitee=invitee).rule is None
    assert Wallet.objects.get(user=invitee).balance == 0
