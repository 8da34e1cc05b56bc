"""Checks every ledger invariant of DESIGN.md. Used by ``manage.py wallet_verify``, the
benchmarks and the test suite, so all three judge the ledger by the same code."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import F, Q, QuerySet, Sum, Window
from django.utils import timezone

from wallet.models import CreditLot, Hold, LedgerEntry, Wallet


@dataclass(frozen=True)
class Violation:
    wallet_id: int | None
    invariant: str
    message: str

    def __str__(self) -> str:
        where = f"wallet {self.wallet_id}" if self.wallet_id is not None else "ledger"
        return f"[{self.invariant}] {where}: {self.message}"


def _scope(qs: QuerySet, field: str, wallet_ids: list[int] | None) -> QuerySet:
    return qs.filter(**{f"{field}__in": wallet_ids}) if wallet_ids is not None else qs


def _sums(qs: QuerySet, field: str) -> dict[int, int]:
    return {
        row["wallet_id"]: int(row["total"] or 0)
        for row in qs.values("wallet_id").annotate(total=Sum(field)).order_by()
    }


def wallet_verify(
    *, wallet_ids: Iterable[int] | None = None, now: dt.datetime | None = None
) -> list[Violation]:
    """Return every violation found (an empty list means the ledger is consistent)."""
    ids = list(wallet_ids) if wallet_ids is not None else None
    now = now or timezone.now()
    found: list[Violation] = []

    lots = _sums(_scope(CreditLot.objects.all(), "wallet_id", ids), "remaining")
    entries = _sums(_scope(LedgerEntry.objects.all(), "wallet_id", ids), "amount")
    holds = _sums(
        _scope(Hold.objects.filter(status=Hold.Status.ACTIVE), "wallet_id", ids), "amount"
    )
    wallets = _scope(Wallet.objects.all(), "id", ids).values_list(
        "id", "balance", "held", "next_expiry_at"
    )
    for wallet_id, balance, held, next_expiry in wallets.iterator(chunk_size=2000):
        lot_total, entry_total = lots.get(wallet_id, 0), entries.get(wallet_id, 0)
        if not balance == lot_total == entry_total:
            found.append(
                Violation(
                    wallet_id,
                    "1-balance",
                    f"balance {balance} != sum(lots) {lot_total} or sum(entries) {entry_total}",
                )
            )
        if balance < 0 or held < 0:
            found.append(Violation(wallet_id, "2-non-negative", f"balance {balance}, held {held}"))
        if held != holds.get(wallet_id, 0):
            found.append(
                Violation(
                    wallet_id,
                    "2-held",
                    f"held {held} != sum(active holds) {holds.get(wallet_id, 0)}",
                )
            )
        due_unseen = CreditLot.objects.filter(
            wallet_id=wallet_id, has_credits=True, expires_at__isnull=False
        )
        if next_expiry is not None:
            due_unseen = due_unseen.filter(expires_at__lt=next_expiry)
        if due_unseen.exists():
            found.append(
                Violation(
                    wallet_id,
                    "6-expiry",
                    "a lot expires before next_expiry_at, so it could be spent after expiring",
                )
            )

    # 3. Append-only: per wallet, in insertion order, each entry's balance_after is the
    # running sum. An edited, deleted or reordered entry breaks the chain.
    running = Window(Sum("amount"), partition_by=[F("wallet_id")], order_by=F("id").asc())
    broken = (
        _scope(LedgerEntry.objects.all(), "wallet_id", ids)
        .annotate(running=running)
        .filter(~Q(running=F("balance_after")))
        .values_list("wallet_id", "id", "balance_after", "running")[:50]
    )
    for wallet_id, entry_id, balance_after, total in broken:
        found.append(
            Violation(
                wallet_id,
                "3-append-only",
                f"entry {entry_id}: balance_after {balance_after} != running sum {total}",
            )
        )

    # 4. Adjustments say why, and who: a staff user, or the operator's shell.
    for wallet_id, entry_id in (
        _scope(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.ADJUSTMENT), "wallet_id", ids)
        .filter(Q(reason="") | (Q(actor__isnull=True) & ~Q(reference_type="operator")))
        .values_list("wallet_id", "id")[:50]
    ):
        found.append(
            Violation(wallet_id, "4-reference", f"adjustment {entry_id} lacks a reason or an actor")
        )

    # Every lot was created by exactly one positive entry of its amount.
    for wallet_id, lot_id in (
        _scope(CreditLot.objects.all(), "wallet_id", ids)
        .annotate(credited=Sum("entries__amount", filter=Q(entries__amount__gt=0)))
        .filter(~Q(credited=F("amount")) | Q(credited__isnull=True))
        .values_list("wallet_id", "id")[:50]
    ):
        found.append(
            Violation(wallet_id, "5-lot-origin", f"lot {lot_id} has no matching credit entry")
        )

    # Settled holds are internally consistent.
    for wallet_id, hold_id in (
        _scope(Hold.objects.filter(status=Hold.Status.CAPTURED), "wallet_id", ids)
        .filter(
            Q(captured_amount__isnull=True)
            | ~Q(capture_requested=F("captured_amount") + F("shortfall"))
        )
        .values_list("wallet_id", "id")[:50]
    ):
        found.append(Violation(wallet_id, "hold", f"captured hold {hold_id} does not add up"))
    return found
