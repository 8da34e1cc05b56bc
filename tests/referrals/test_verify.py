"""The reward-ledger check finds tampering, and refuses it at the database where it can."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction

from referrals.models import ReferralAccount, ReferralLedgerEntry
from referrals.verify import referral_verify
from tests.helpers import micro
from tests.referrals.conftest import account, invite

pytestmark = pytest.mark.django_db


def test_the_check_passes_then_finds_a_tampered_balance(inviter, rule, pay) -> None:
    pay(invite(inviter), "100")
    call_command("referral_verify")
    mine = account(inviter)
    ReferralAccount.objects.filter(pk=mine.pk).update(balance=micro("11"), total_earned=1)
    problems = referral_verify([mine.pk])
    assert len(problems) == 2 and "entries sum to 10000000" in problems[0]
    with pytest.raises(CommandError, match="2 violations"):
        call_command("referral_verify", "--account", str(mine.pk))
    ReferralAccount.objects.filter(pk=mine.pk).update(balance=micro("10"), total_earned=micro("10"))


def test_the_database_refuses_impossible_positions(inviter, rule, pay) -> None:
    pay(invite(inviter), "100")
    mine = account(inviter)
    for change in ({"balance": -1}, {"debt": -1}, {"debt": 5}):  # debt while in credit
        with pytest.raises(IntegrityError), transaction.atomic():
            ReferralAccount.objects.filter(pk=mine.pk).update(**change)
    entry = ReferralLedgerEntry.objects.get()
    with pytest.raises(RuntimeError):
        entry.save()
    with pytest.raises(RuntimeError):
        entry.delete()
