"""Reads of the referrals app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.urls import reverse

from referrals.models import Referral, ReferralAccount, ReferralLedgerEntry


def invite_link(*, code: str) -> str:
    return settings.SITE_URL.rstrip("/") + reverse("referral-invite", kwargs={"code": code})


def referral_entry_list(*, account: ReferralAccount) -> QuerySet[ReferralLedgerEntry]:
    """The account's reward ledger, newest first."""
    return (
        ReferralLedgerEntry.objects.filter(account=account)
        .select_related("referral__invitee")
        .order_by("-id")
    )


def referral_list_for_inviter(*, user: Any) -> QuerySet[Referral]:
    return Referral.objects.filter(inviter=user).select_related("invitee").order_by("-id")


@dataclass(frozen=True)
class ReferralSummary:
    code: str
    link: str
    proceeds_micro: int
    total_revenue_micro: int
    debt_micro: int
    invited_count: int
    recent: list[ReferralLedgerEntry] = field(default_factory=list)


def referral_summary(*, account: ReferralAccount, recent: int = 20) -> ReferralSummary:
    """What the inviter sees: proceeds ready to use (the reward balance), total revenue
    (every reward earned, less reversals), any debt, and how many people they invited."""
    fresh = ReferralAccount.objects.get(pk=account.pk)
    return ReferralSummary(
        code=fresh.code,
        link=invite_link(code=fresh.code),
        proceeds_micro=fresh.balance,
        total_revenue_micro=fresh.total_earned,
        debt_micro=fresh.debt,
        invited_count=referral_list_for_inviter(user=fresh.user_id).count(),
        recent=list(referral_entry_list(account=fresh)[:recent]),
    )


def masked_email(email: str) -> str:
    """``dana@example.com`` -> ``d***@example.com``: enough for an inviter to recognise a
    friend, not enough to harvest addresses."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"
