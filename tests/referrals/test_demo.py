"""seed_demo: a redemption batch with printed codes, an active reward rule, and a referral
whose top-up paid the demo user a reward. Repeatable."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command

from accounts.models import User
from redemption import services as redemption_services
from referrals.models import Referral, RewardRule
from tests.helpers import micro
from tests.referrals.conftest import account

pytestmark = pytest.mark.django_db


def test_seed_demo_prints_codes_and_sets_up_a_referral(django_capture_on_commit_callbacks) -> None:
    outputs = []
    for _ in range(2):
        out = StringIO()
        with django_capture_on_commit_callbacks(execute=True):
            call_command("seed_demo", stdout=out)
        outputs.append(out.getvalue())
    codes = [re.findall(r"[0-9A-Z]{4}(?:-[0-9A-Z]{4}){3}", text) for text in outputs]
    assert len(codes[0]) == 3 and codes[0] == codes[1]  # the same codes each run
    demo = User.objects.get(email="demo@example.com")
    assert redemption_services.code_redeem(user=demo, code=codes[0][0]).redemption
    [rule] = RewardRule.objects.filter(is_active=True)
    referral = Referral.objects.get()
    assert (referral.inviter, referral.invitee.email, referral.rule) == (
        demo,
        "friend@example.com",
        rule,
    )
    assert account(demo).balance == micro("10")  # 10% of the friend's $100 top-up
