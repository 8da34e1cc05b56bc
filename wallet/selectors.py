"""Reads of wallets, lots, holds and the ledger."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, Min, QuerySet, Sum
from django.utils import timezone

from config import sql
from wallet import money
from wallet.errors import WalletNotFound
from wallet.models import CreditLot, Hold, LedgerEntry, Wallet, lot_burn_order


def wallet_get(*, wallet_id: int) -> Wallet:
    wallet = Wallet.objects.filter(pk=wallet_id).first()
    if wallet is None:
        raise WalletNotFound(wallet_id=wallet_id)
    return wallet


def wallet_get_for_user(*, user: Any) -> Wallet:
    wallet = Wallet.objects.filter(user=user).first()
    if wallet is None:
        raise WalletNotFound(user_id=getattr(user, "pk", None))
    return wallet


def wallet_get_for_organization(*, organization: Any) -> Wallet:
    wallet = Wallet.objects.filter(organization=organization).first()
    if wallet is None:
        raise WalletNotFound(organization_id=getattr(organization, "pk", None))
    return wallet


def wallet_get_for_owner(*, user: Any = None, organization: Any = None) -> Wallet:
    if organization is not None:
        return wallet_get_for_organization(organization=organization)
    return wallet_get_for_user(user=user)


@dataclass(frozen=True)
class CategorySummary:
    category: str
    remaining: int
    lots: int
    next_expiry: dt.datetime | None


@dataclass(frozen=True)
class WalletSummary:
    balance: int
    held: int
    available: int
    frozen: int
    categories: list[CategorySummary] = field(default_factory=list)


def wallet_summary(*, wallet: Wallet, now: dt.datetime | None = None) -> WalletSummary:
    """Balance, held, available (net of credits past expiry awaiting the expiry job), and
    the credits left per category with the next expiry of each."""
    now = now or timezone.now()
    rows = (
        CreditLot.objects.filter(wallet=wallet, has_credits=True)
        .values("category")
        .annotate(remaining=Sum("remaining"), lots=Count("id"), next_expiry=Min("expires_at"))
        .order_by("category")
    )
    frozen = (
        CreditLot.objects.filter(wallet=wallet, has_credits=True, expires_at__lte=now).aggregate(
            total=Sum("remaining")
        )["total"]
        or 0
    )
    return WalletSummary(
        balance=wallet.balance,
        held=wallet.held,
        available=max(wallet.balance - wallet.held - frozen, 0),
        frozen=frozen,
        categories=[
            CategorySummary(r["category"], r["remaining"], r["lots"], r["next_expiry"])
            for r in rows
        ],
    )


def ledger_entry_list(
    *,
    wallet: Wallet,
    kinds: list[str] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> QuerySet[LedgerEntry]:
    entries = LedgerEntry.objects.filter(wallet=wallet)
    if kinds:
        entries = entries.filter(kind__in=kinds)
    if since is not None:
        entries = entries.filter(created_at__gte=since)
    if until is not None:
        entries = entries.filter(created_at__lt=until)
    return entries.order_by("-id")


def lot_list(*, wallet: Wallet, with_credits_only: bool = True) -> QuerySet[CreditLot]:
    lots = CreditLot.objects.filter(wallet=wallet)
    if with_credits_only:
        lots = lots.filter(has_credits=True)
    return lots.order_by(*lot_burn_order())


def lot_list_for_reference(*, reference_type: str, reference_id: str) -> QuerySet[CreditLot]:
    return CreditLot.objects.filter(
        reference_type=reference_type, reference_id=reference_id
    ).order_by("id")


def hold_get(*, wallet: Wallet, request_id: str) -> Hold | None:
    return Hold.objects.filter(wallet=wallet, request_id=request_id).first()


def hold_list_active(*, wallet: Wallet) -> QuerySet[Hold]:
    return Hold.objects.filter(wallet=wallet, status=Hold.Status.ACTIVE).order_by("id")


_WALLET = f'SELECT {sql.columns(Wallet, "w")} FROM "wallet_wallet" w WHERE w."id" = %s'  # noqa: S608


def wallet_available(*, wallet_id: int, now: dt.datetime | None = None) -> int:
    """``balance - held - frozen`` of one wallet, in one indexed read in the usual case
    (no lot past its expiry), for headers on every API response."""
    row = sql.fetch_one(_WALLET, [wallet_id])
    if row is None:
        raise WalletNotFound(wallet_id=wallet_id)
    wallet = sql.from_row(Wallet, row)
    balance, held, next_expiry_at = wallet.balance, wallet.held, wallet.next_expiry_at
    now = now or timezone.now()
    frozen = 0
    if next_expiry_at is not None and next_expiry_at <= now:
        frozen = (
            CreditLot.objects.filter(
                wallet_id=wallet_id, has_credits=True, expires_at__lte=now
            ).aggregate(total=Sum("remaining"))["total"]
            or 0
        )
    return max(balance - held - frozen, 0)


def hold_total_active(*, hold_ids: Any) -> int:
    """Sum of the active holds among ``hold_ids`` (ids or a subquery of ids): credits still
    reserved by requests in flight. Holds leave the sum when captured, released or expired."""
    total = Hold.objects.filter(pk__in=hold_ids, status=Hold.Status.ACTIVE).aggregate(
        total=Sum("amount")
    )["total"]
    return int(total or 0)


def wallet_low_balance_threshold(*, wallet: Wallet) -> int:
    """The balance (µcr) under which this wallet's owner is warned."""
    if wallet.low_balance_threshold_micro is not None:
        return wallet.low_balance_threshold_micro
    return money.credits_to_micro(settings.LOW_BALANCE_THRESHOLD_CREDITS, allow_zero=True)


def wallet_is_low(*, wallet: Wallet) -> bool:
    return wallet.balance < wallet_low_balance_threshold(wallet=wallet)


def wallet_min_balance_default() -> int:
    """µcr a wallet needs available to start a request, unless it has its own minimum:
    ``METERING_MIN_BALANCE_CREDITS``, or the credit value of $0.10."""
    if settings.METERING_MIN_BALANCE_CREDITS not in (None, ""):
        return money.credits_to_micro(settings.METERING_MIN_BALANCE_CREDITS, allow_zero=True)
    return money.usd_to_micro(Decimal("0.10"))


def wallet_min_balance(*, wallet_id: int, own: int | None = None, known: bool = False) -> int:
    """The wallet's minimum to start a request. ``own`` is its ``min_balance_micro`` when
    the caller already read it (``known``); otherwise it is read here."""
    if not known:
        own = (
            Wallet.objects.filter(pk=wallet_id).values_list("min_balance_micro", flat=True).first()
        )
    return wallet_min_balance_default() if own is None else own
