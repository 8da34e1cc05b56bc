"""Checks of the reward ledger's invariants (``referrals.models``), for tests and operators."""

from __future__ import annotations

from collections.abc import Iterable

from referrals.models import ReferralAccount, ReferralLedgerEntry

Kind = ReferralLedgerEntry.Kind


def referral_verify(account_ids: Iterable[int] | None = None) -> list[str]:
    """One line per violation (empty when every account is consistent)."""
    accounts = ReferralAccount.objects.order_by("id")
    if account_ids is not None:
        accounts = accounts.filter(pk__in=list(account_ids))
    problems: list[str] = []
    for account in accounts:
        position = earned = 0
        for entry in ReferralLedgerEntry.objects.filter(account=account).order_by("id"):
            position += entry.amount
            if entry.kind in (Kind.REWARD, Kind.REVERSAL):
                earned += entry.amount
            split = (max(position, 0), max(-position, 0))
            if (entry.balance_after, entry.debt_after) != split:
                problems.append(
                    f"account {account.pk}: entry {entry.pk} says balance/debt "
                    f"{entry.balance_after}/{entry.debt_after}, running sum gives {split}"
                )
        if (account.balance, account.debt) != (max(position, 0), max(-position, 0)):
            problems.append(
                f"account {account.pk}: balance/debt {account.balance}/{account.debt} but the "
                f"entries sum to {position}"
            )
        if account.total_earned != earned:
            problems.append(
                f"account {account.pk}: total earned {account.total_earned} but rewards less "
                f"reversals sum to {earned}"
            )
    return problems
