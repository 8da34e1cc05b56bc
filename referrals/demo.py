"""Demo data for ``manage.py seed_demo``: an active reward rule, and a friend who signed up
through the demo user's invite link and topped up (so the demo user has a reward)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from accounts import selectors as account_selectors
from accounts import services as account_services
from billing.demo import billing_demo_seed
from referrals import services
from referrals.models import Referral, RewardRule
from wallet import money

DEMO_RULE = "10% of the first top-up, 5 welcome credits"
FRIEND_EMAIL = "friend@example.com"


def referrals_demo_seed(*, inviter: Any, staff: Any, password: str) -> Referral:
    """Idempotent: the rule, the friend and the referral are created once; the friend's
    top-up completes once (its follow-up task pays the demo user's reward)."""
    rule = RewardRule.objects.filter(name=DEMO_RULE).first()
    if rule is None:
        rule = RewardRule.objects.create(
            name=DEMO_RULE,
            basis=RewardRule.Basis.PERCENT_FIRST,
            percent=Decimal(10),
            signup_credits_micro=money.credits_to_micro("5"),
            signup_credits_days=30,
        )
        if not RewardRule.objects.filter(is_active=True).exists():
            services.reward_rule_activate(rule=rule)
    account = services.referral_account_get_or_create(user=inviter)
    friend = account_selectors.user_get_by_email(email=FRIEND_EMAIL)
    if friend is None:
        friend = account_services.user_create(
            email=FRIEND_EMAIL, password=password, full_name="Frankie Friend", country="US"
        )
        referral = services.referral_record_signup(invitee=friend, invite_code=account.code)
    else:
        referral = Referral.objects.get(invitee=friend)
    billing_demo_seed(user=friend, staff=staff)
    return referral
