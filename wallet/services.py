"""Every change to a balance goes through this module.

Guarantees kept by every service here (see ``wallet.models`` for the invariants):

* Amounts are validated integers of µcr (``wallet.money.validate_micro``).
* Each credit movement writes one ledger entry whose UNIQUE idempotency key is inserted in
  the same transaction as the movement; replaying a key returns the first entry, and a key
  reused for a different movement raises ``IdempotencyConflict``.
* Rows are locked in the fixed order hold -> wallet -> lots, and the wallet row is locked
  before any lot of it is read for writing, so lots change only under their wallet's lock.
* Lots whose expiry has passed are frozen until ``lots_expire`` writes their expiry entry:
  they are neither burned nor counted as available, so an expired credit is never spent.

The settle step (hold capture, debit, negative adjustment) runs as one PL/pgSQL call on
PostgreSQL so the hot wallet row is locked only for that call and its commit; on other
databases the same steps run in Python (``_settle_python``). The two paths are checked
against each other by the test suite.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Min, Q, Sum
from django.utils import timezone

from config import sql as plain_sql
from config.errors import IdempotencyConflict
from wallet import money
from wallet.errors import (
    BalanceWouldGoNegative,
    HoldAlreadyCaptured,
    HoldExpired,
    HoldNotFound,
    HoldReleased,
    IdempotencyKeyRequired,
    InsufficientCredits,
    InvalidAmount,
    InvalidCategory,
    InvalidExpiry,
    LotNotReversible,
    ReasonRequired,
    WalletClosed,
    WalletNotFound,
)
from wallet.models import CreditLot, Hold, LedgerEntry, Wallet, lot_burn_order

Category = CreditLot.Category
Kind = LedgerEntry.Kind

KIND_FOR_CATEGORY: dict[str, str] = {
    Category.PAID: Kind.TOPUP,
    Category.BONUS: Kind.BONUS,
    Category.PROMOTIONAL: Kind.PROMO,
    Category.REDEMPTION: Kind.REDEMPTION,
    Category.REFERRAL: Kind.REFERRAL_TRANSFER,
    Category.ADJUSTMENT: Kind.ADJUSTMENT,
    Category.INCLUDED: Kind.GRANT,
}
_DEBIT_KINDS = {Kind.USAGE, Kind.ADJUSTMENT, Kind.REVERSAL, Kind.REFUND}


@dataclass(frozen=True)
class Ref:
    """What a movement refers to: an order, a usage record, a code, a staff action."""

    type: str
    id: str = ""

    @classmethod
    def to(cls, obj: Any) -> Ref:
        meta = obj._meta
        return cls(f"{meta.app_label}.{meta.model_name}", str(obj.pk))


@dataclass(frozen=True)
class Charge:
    """The outcome of a debit or a capture."""

    entry_id: int | None
    charged: int
    shortfall: int
    balance_after: int
    replayed: bool = False
    # Available credits (balance - held - frozen) right after, when known: an API response
    # reports them without reading the wallet again. None for replays.
    available_after: int | None = None


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or timezone.now()


def _require_key(key: str | None) -> str:
    if not key or not str(key).strip():
        raise IdempotencyKeyRequired()
    key = str(key).strip()
    if len(key) > 200:
        raise IdempotencyKeyRequired("The idempotency key is longer than 200 characters.")
    return key


def _require_ref(reference: Ref | None) -> Ref:
    if reference is None or not reference.type:
        raise ValueError("Every ledger entry needs a reference.")
    return reference


def use_pg_functions() -> bool:
    return plain_sql.vendor() == "postgresql" and settings.WALLET_PG_FUNCTIONS


def _pg_call(sql: str, params: Sequence[Any]) -> tuple[Any, ...]:
    """Call one of the wallet's PL/pgSQL functions and return its row.

    These calls bind parameters on the server and are prepared once per connection, so
    PostgreSQL does not parse and plan them on every request (Django's own cursors bind on
    the client). Errors are translated to Django's database errors as usual.
    """
    row = plain_sql.fetch_one(sql, params)
    assert row is not None
    return tuple(row)


def _replayed_entry(key: str, *, wallet_id: int, kind: str, amount: int) -> LedgerEntry | None:
    """The entry already written under ``key``, if it describes the same movement."""
    entry = LedgerEntry.objects.filter(idempotency_key=key).first()
    if entry is None:
        return None
    if (entry.wallet_id, entry.kind, entry.amount) != (wallet_id, kind, amount):
        raise IdempotencyConflict(idempotency_key=key)
    return entry


def _write_entry(
    *,
    wallet_id: int,
    kind: str,
    amount: int,
    balance_after: int,
    key: str,
    reference: Ref,
    now: dt.datetime,
    lot_id: int | None = None,
    actor_id: int | None = None,
    reason: str = "",
    corrects_id: int | None = None,
) -> LedgerEntry:
    """Append one entry. Callers hold the wallet's row lock, so ids follow balance order."""
    return LedgerEntry.objects.create(
        wallet_id=wallet_id,
        kind=kind,
        amount=amount,
        balance_after=balance_after,
        lot_id=lot_id,
        reference_type=reference.type,
        reference_id=reference.id,
        actor_id=actor_id,
        reason=reason,
        corrects_id=corrects_id,
        idempotency_key=key,
        created_at=now,
    )


def _lock_wallet(wallet_id: int) -> Wallet:
    try:
        return Wallet.objects.select_for_update().get(pk=wallet_id)
    except Wallet.DoesNotExist as exc:
        raise WalletNotFound(wallet_id=wallet_id) from exc


def _wallet_id(wallet: Wallet | int) -> int:
    return wallet if isinstance(wallet, int) else wallet.pk


def _not_due(now: dt.datetime) -> Q:
    return Q(expires_at__isnull=True) | Q(expires_at__gt=now)


def _due_sum(wallet: Wallet, now: dt.datetime) -> int:
    """Credits in lots past their expiry but not yet expired by the job (frozen)."""
    if wallet.next_expiry_at is None or wallet.next_expiry_at > now:
        return 0
    total = CreditLot.objects.filter(
        wallet_id=wallet.pk, has_credits=True, expires_at__lte=now
    ).aggregate(total=Sum("remaining"))["total"]
    return int(total or 0)


# --- Wallets --------------------------------------------------------------------------


def wallet_create(*, user: Any = None, organization: Any = None) -> Wallet:
    """The one wallet of a user or an organization (created on first call)."""
    if (user is None) == (organization is None):
        raise ValueError("A wallet belongs to exactly one user or one organization.")
    lookup = {"user": user} if user is not None else {"organization": organization}
    wallet, _ = Wallet.objects.get_or_create(**lookup)
    return wallet


def wallet_set_status(*, wallet: Wallet, status: str) -> Wallet:
    """Close or reopen a wallet. A closed wallet takes no new credits, holds or debits;
    holds already taken can still be captured or released."""
    if status not in Wallet.Status.values:
        raise ValueError(f"Unknown wallet status {status!r}")
    Wallet.objects.filter(pk=wallet.pk).update(status=status)
    wallet.status = status
    return wallet


# --- Credits --------------------------------------------------------------------------


def wallet_credit(
    *,
    wallet: Wallet | int,
    amount: int,
    category: str,
    idempotency_key: str,
    reference: Ref,
    kind: str | None = None,
    expires_at: dt.datetime | None = None,
    priority: int | None = None,
    actor: Any = None,
    reason: str = "",
    corrects: LedgerEntry | None = None,
    now: dt.datetime | None = None,
) -> LedgerEntry:
    """Add credits as a new lot and a positive ledger entry, exactly once per key.
    ``corrects`` names the entry this one corrects (a reversed charge)."""
    amount = money.validate_micro(amount)
    if category not in Category.values:
        raise InvalidCategory(category=category)
    kind = kind or KIND_FOR_CATEGORY[category]
    key = _require_key(idempotency_key)
    reference = _require_ref(reference)
    if kind == Kind.ADJUSTMENT and not reason.strip():
        raise ReasonRequired()
    now = _now(now)
    if expires_at is not None and expires_at <= now:
        raise InvalidExpiry(expires_at=expires_at.isoformat())
    wallet_id = _wallet_id(wallet)
    replay = _replayed_entry(key, wallet_id=wallet_id, kind=kind, amount=amount)
    if replay is not None:
        return replay
    try:
        with transaction.atomic():
            locked = _lock_wallet(wallet_id)
            if locked.status != Wallet.Status.ACTIVE:
                raise WalletClosed(wallet_id=wallet_id)
            lot = CreditLot.objects.create(
                wallet_id=wallet_id,
                category=category,
                category_rank=CreditLot.CATEGORY_RANK[Category(category)],
                priority=CreditLot.DEFAULT_PRIORITY if priority is None else priority,
                amount=amount,
                remaining=amount,
                expires_at=expires_at,
                reference_type=reference.type,
                reference_id=reference.id,
                created_at=now,
            )
            update: dict[str, Any] = {"balance": F("balance") + amount}
            if expires_at is not None and (
                locked.next_expiry_at is None or expires_at < locked.next_expiry_at
            ):
                update["next_expiry_at"] = expires_at
            Wallet.objects.filter(pk=wallet_id).update(**update)
            return _write_entry(
                wallet_id=wallet_id,
                kind=kind,
                amount=amount,
                balance_after=locked.balance + amount,
                key=key,
                reference=reference,
                now=now,
                lot_id=lot.pk,
                actor_id=getattr(actor, "pk", None),
                reason=reason,
                corrects_id=corrects.pk if corrects is not None else None,
            )
    except IntegrityError:
        replay = _replayed_entry(key, wallet_id=wallet_id, kind=kind, amount=amount)
        if replay is not None:
            return replay
        raise


# --- The settle step: burn lots, move the balance, release a hold -----------------------


def _settle_python(
    *,
    wallet_id: int,
    amount: int,
    release: int,
    allow_partial: bool,
    kind: str,
    key: str,
    reference: Ref,
    actor_id: int | None,
    reason: str,
    hold_id: int | None,
    corrects_id: int | None,
    now: dt.datetime,
) -> tuple[str, Charge, int]:
    """Portable twin of the ``wallet_settle`` PL/pgSQL function; same steps, same order.

    Returns (outcome, charge, available) where outcome is ``ok`` or ``insufficient``.
    Must run inside a transaction.
    """
    wallet = _lock_wallet(wallet_id)
    due = _due_sum(wallet, now)
    available = wallet.balance - due - wallet.held + release
    if amount <= available:
        charge = amount
    elif allow_partial:
        charge = max(available, 0)
    else:
        untouched = max(wallet.balance - due - wallet.held, 0)
        return "insufficient", Charge(None, 0, amount, wallet.balance, False, untouched), available
    need = charge
    if need:
        lots = (
            CreditLot.objects.select_for_update()
            .filter(_not_due(now), wallet_id=wallet_id, has_credits=True)
            .order_by(*lot_burn_order())
            .values_list("id", "remaining")
        )
        for lot_id, remaining in list(lots):
            take = min(remaining, need)
            CreditLot.objects.filter(pk=lot_id).update(remaining=F("remaining") - take)
            need -= take
            if need == 0:
                break
        if need:
            raise RuntimeError(f"wallet {wallet_id}: lots hold less than the balance")
    Wallet.objects.filter(pk=wallet_id).update(
        balance=F("balance") - charge, held=F("held") - release
    )
    balance_after = wallet.balance - charge
    entry_id = None
    if charge:
        entry_id = _write_entry(
            wallet_id=wallet_id,
            kind=kind,
            amount=-charge,
            balance_after=balance_after,
            key=key,
            reference=reference,
            now=now,
            actor_id=actor_id,
            reason=reason,
            corrects_id=corrects_id,
        ).pk
    # The capture recorded the full amount as charged; correct it only on a shortfall.
    if hold_id is not None and charge != amount:
        Hold.objects.filter(pk=hold_id).update(captured_amount=charge, shortfall=amount - charge)
    # Due lots are never burned, so what was frozen before is frozen still.
    available_after = max(balance_after - (wallet.held - release) - due, 0)
    charge_result = Charge(entry_id, charge, amount - charge, balance_after, False, available_after)
    return "ok", charge_result, available


def _settle(
    *,
    wallet_id: int,
    amount: int,
    release: int,
    allow_partial: bool,
    kind: str,
    key: str,
    reference: Ref,
    actor_id: int | None = None,
    reason: str = "",
    hold_id: int | None = None,
    corrects_id: int | None = None,
    now: dt.datetime,
) -> tuple[str, Charge, int]:
    if not use_pg_functions():
        return _settle_python(
            wallet_id=wallet_id,
            amount=amount,
            release=release,
            allow_partial=allow_partial,
            kind=kind,
            key=key,
            reference=reference,
            actor_id=actor_id,
            reason=reason,
            hold_id=hold_id,
            corrects_id=corrects_id,
            now=now,
        )
    outcome, entry_id, charged, balance_after, available, available_after = _pg_call(
        "SELECT * FROM wallet_settle(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            wallet_id,
            amount,
            release,
            allow_partial,
            kind,
            key,
            reference.type,
            reference.id,
            actor_id,
            reason,
            hold_id,
            corrects_id,
            now,
        ],
    )
    if outcome == "not_found":
        raise WalletNotFound(wallet_id=wallet_id)
    charge = Charge(entry_id, charged, amount - charged, balance_after, False, available_after)
    return outcome, charge, available


def _debit(
    *,
    wallet: Wallet | int,
    amount: int,
    kind: str,
    key: str,
    reference: Ref,
    allow_partial: bool,
    actor: Any = None,
    reason: str = "",
    corrects: LedgerEntry | None = None,
    now: dt.datetime,
    require_open: bool = True,
) -> Charge:
    wallet_id = _wallet_id(wallet)
    existing = LedgerEntry.objects.filter(idempotency_key=key).first()
    if existing is not None:
        if (
            existing.wallet_id != wallet_id
            or existing.kind != kind
            or (not allow_partial and existing.amount != -amount)
        ):
            raise IdempotencyConflict(idempotency_key=key)
        return Charge(
            existing.pk, -existing.amount, amount + existing.amount, existing.balance_after, True
        )
    if require_open:
        status = Wallet.objects.filter(pk=wallet_id).values_list("status", flat=True).first()
        if status is None:
            raise WalletNotFound(wallet_id=wallet_id)
        if status != Wallet.Status.ACTIVE:
            raise WalletClosed(wallet_id=wallet_id)
    try:
        with statement_scope():
            outcome, charge, available = _settle(
                wallet_id=wallet_id,
                amount=amount,
                release=0,
                allow_partial=allow_partial,
                kind=kind,
                key=key,
                reference=reference,
                actor_id=getattr(actor, "pk", None),
                reason=reason,
                corrects_id=corrects.pk if corrects is not None else None,
                now=now,
            )
    except IntegrityError:
        existing = LedgerEntry.objects.filter(idempotency_key=key).first()
        if existing is None:
            raise
        return _debit(
            wallet=wallet_id,
            amount=amount,
            kind=kind,
            key=key,
            reference=reference,
            allow_partial=allow_partial,
            now=now,
            require_open=False,
        )
    if outcome == "insufficient":
        raise InsufficientCredits(available=max(available, 0), requested=amount)
    return charge


def wallet_debit(
    *,
    wallet: Wallet | int,
    amount: int,
    idempotency_key: str,
    reference: Ref,
    kind: str = Kind.USAGE,
    allow_partial: bool = False,
    actor: Any = None,
    reason: str = "",
    corrects: LedgerEntry | None = None,
    now: dt.datetime | None = None,
) -> Charge:
    """Take ``amount`` from the wallet's available credits, burning lots in the fixed order.

    Without ``allow_partial`` a debit larger than the available credits raises
    ``InsufficientCredits`` and changes nothing. With it (usage recorded after the fact) the
    available credits are charged and the rest is reported as ``shortfall``; the balance
    never goes negative. A charge of 0 writes no entry.
    """
    amount = money.validate_micro(amount)
    if kind not in _DEBIT_KINDS:
        raise InvalidCategory(f"{kind!r} is not a debit kind.", kind=kind)
    return _debit(
        wallet=wallet,
        amount=amount,
        kind=kind,
        key=_require_key(idempotency_key),
        reference=_require_ref(reference),
        allow_partial=allow_partial,
        actor=actor,
        reason=reason,
        corrects=corrects,
        now=_now(now),
    )


# --- Holds ----------------------------------------------------------------------------


def statement_scope() -> Any:
    """Scope for one PL/pgSQL call. Outside a transaction the call runs in autocommit, so
    the wallet row lock lasts only for the call and its commit (no client round trip while
    locked); inside one, a savepoint lets an idempotency conflict be recovered from."""
    if use_pg_functions() and not connection.in_atomic_block:
        return nullcontext()
    return transaction.atomic()


def _hold_reserve(
    *,
    wallet_id: int,
    amount: int,
    request_id: str,
    expires_at: dt.datetime,
    reference: Ref,
    now: dt.datetime,
    exact: bool,
) -> tuple[str, int | None, int | None]:
    """Reserve credits and insert the hold. Returns (outcome, hold id, available after):
    ``ok``; ``duplicate`` (the request id already has a hold: nothing changed); or
    ``refused`` (nothing reserved: too few credits, a closed or unknown wallet, or — on
    the fast path only — a lot that may be past its expiry).

    The fast path (PostgreSQL, one call) never raises for a duplicate, so a caller's
    transaction needs no savepoint around it; the exact path locks the wallet and
    subtracts the frozen credits.
    """
    if use_pg_functions() and not exact:
        outcome, hold_id, available_after = _pg_call(
            "SELECT * FROM wallet_hold_create(%s, %s, %s, %s, %s, %s, %s)",
            [wallet_id, amount, request_id, expires_at, reference.type, reference.id, now],
        )
        return outcome, hold_id, available_after
    try:
        with transaction.atomic():
            wallet = _lock_wallet(wallet_id)
            due = _due_sum(wallet, now)
            reserved = Wallet.objects.filter(
                pk=wallet_id,
                status=Wallet.Status.ACTIVE,
                balance__gte=F("held") + amount + due,
            ).update(held=F("held") + amount)
            if not reserved:
                return "refused", None, None
            hold_id = Hold.objects.create(
                wallet_id=wallet_id,
                request_id=request_id,
                amount=amount,
                expires_at=expires_at,
                created_at=now,
                reference_type=reference.type,
                reference_id=reference.id,
            ).pk
    except IntegrityError:
        return "duplicate", None, None
    return "ok", hold_id, wallet.balance - wallet.held - amount - due


def _hold_replay(*, wallet_id: int, request_id: str, amount: int) -> Hold | None:
    hold = Hold.objects.filter(wallet_id=wallet_id, request_id=request_id).first()
    if hold is not None and hold.amount != amount:
        raise IdempotencyConflict(
            "This request id already holds a different amount.", request_id=request_id
        )
    return hold


def hold_reserved(
    *,
    hold_id: int,
    wallet_id: int,
    request_id: str,
    amount: int,
    expires_at: dt.datetime,
    reference: Ref,
    now: dt.datetime,
    available_after: int | None,
) -> Hold:
    """The ``Hold`` a reservation just inserted (``wallet_hold_create``), without reading
    it back; ``available_after`` is what the wallet had left available."""
    hold = plain_sql.new(
        Hold,
        wallet_id=wallet_id,
        request_id=request_id,
        amount=amount,
        status=Hold.Status.ACTIVE,
        expires_at=expires_at,
        created_at=now,
        reference_type=reference.type,
        reference_id=reference.id,
    )
    plain_sql.stored(hold, hold_id)
    hold.available_after = available_after
    return hold


def hold_create(
    *,
    wallet: Wallet | int,
    amount: int,
    request_id: str,
    expires_at: dt.datetime | None = None,
    reference: Ref | None = None,
    now: dt.datetime | None = None,
) -> Hold:
    """Reserve ``amount`` of the wallet's available credits for one request.

    Idempotent by (wallet, request_id): a retry returns the first hold, and the same id
    with another amount raises ``IdempotencyConflict``. Refuses with
    ``InsufficientCredits`` (limit_source ``wallet``) and changes nothing when
    ``balance - held - frozen`` is below ``amount``.
    """
    amount = money.validate_micro(amount)
    request_id = _require_key(request_id)
    now = _now(now)
    expires_at = expires_at or now + dt.timedelta(seconds=settings.WALLET_HOLD_TTL_SECONDS)
    if expires_at <= now:
        raise InvalidExpiry(expires_at=expires_at.isoformat())
    reference = reference or Ref("wallet.hold", request_id[:64])
    wallet_id = _wallet_id(wallet)
    for exact in (False, True):
        outcome, hold_id, available_after = _hold_reserve(
            wallet_id=wallet_id,
            amount=amount,
            request_id=request_id,
            expires_at=expires_at,
            reference=reference,
            now=now,
            exact=exact,
        )
        if outcome == "ok" and hold_id is not None:
            return hold_reserved(
                hold_id=hold_id,
                wallet_id=wallet_id,
                request_id=request_id,
                amount=amount,
                expires_at=expires_at,
                reference=reference,
                now=now,
                available_after=available_after,
            )
        replay = _hold_replay(wallet_id=wallet_id, request_id=request_id, amount=amount)
        if replay is not None:
            return replay
        wallet_row = Wallet.objects.filter(pk=wallet_id).first()
        if wallet_row is None:
            raise WalletNotFound(wallet_id=wallet_id)
        if wallet_row.status != Wallet.Status.ACTIVE:
            raise WalletClosed(wallet_id=wallet_id)
        available = wallet_row.balance - wallet_row.held - _due_sum(wallet_row, now)
        if available < amount:
            raise InsufficientCredits(available=max(available, 0), requested=amount)
        # Enough credits, yet the fast path refused: a lot is (or was) due to expire.
    raise InsufficientCredits(requested=amount)


def _hold_id(hold: Hold | int) -> int:
    return hold if isinstance(hold, int) else hold.pk


def _raise_not_active(hold: Hold, *, amount: int | None = None) -> Charge:
    """Explain why a hold could not be settled, or replay an identical capture."""
    if hold.status == Hold.Status.CAPTURED:
        if amount is not None and hold.capture_requested == amount:
            entry = LedgerEntry.objects.filter(idempotency_key=hold.capture_key).first()
            balance_after = (
                entry.balance_after
                if entry is not None
                else Wallet.objects.values_list("balance", flat=True).get(pk=hold.wallet_id)
            )
            return Charge(
                entry.pk if entry is not None else None,
                hold.captured_amount or 0,
                hold.shortfall,
                balance_after,
                replayed=True,
            )
        raise HoldAlreadyCaptured(
            hold_id=hold.pk,
            captured_amount=hold.captured_amount,
            capture_requested=hold.capture_requested,
        )
    if hold.status == Hold.Status.RELEASED:
        raise HoldReleased(hold_id=hold.pk)
    raise HoldExpired(hold_id=hold.pk)


_CAPTURE_SQL = "SELECT * FROM wallet_capture(%s, %s, %s, %s, %s, %s, %s)"


def hold_capture(
    *,
    hold: Hold | int,
    amount: int,
    reference: Ref | None = None,
    kind: str = Kind.USAGE,
    now: dt.datetime | None = None,
) -> Charge:
    """Charge the priced usage of a held request and release the rest of the hold, once.

    Exactly once per hold: a second capture with the same amount returns the first result
    (``replayed=True``); with another amount it raises ``HoldAlreadyCaptured``. Capturing a
    released or expired hold raises ``HoldReleased`` / ``HoldExpired``.

    The shortfall rule: when ``amount`` exceeds the hold plus the wallet's available
    credits, what is available is charged and the rest is recorded as ``shortfall``; the
    balance never goes negative.
    """
    amount = money.validate_micro(amount, allow_zero=True)
    hold_id = _hold_id(hold)
    now = _now(now)
    key = Hold.capture_key_of(hold_id)
    if use_pg_functions():
        ref = reference or Ref("wallet.hold", str(hold_id))
        outcome, entry_id, charged, balance_after, _, available_after = _pg_call(
            _CAPTURE_SQL, [hold_id, amount, kind, key, ref.type, ref.id, now]
        )
        if outcome == "ok":
            return Charge(
                entry_id, charged, amount - charged, balance_after, False, available_after
            )
    else:
        with transaction.atomic():
            updated = Hold.objects.filter(pk=hold_id, status=Hold.Status.ACTIVE).update(
                status=Hold.Status.CAPTURED,
                settled_at=now,
                capture_requested=amount,
                captured_amount=amount,
                shortfall=0,
            )
            if updated:
                locked = Hold.objects.values("wallet_id", "amount").get(pk=hold_id)
                ref = reference or Ref("wallet.hold", str(hold_id))
                _, charge, _ = _settle_python(
                    wallet_id=locked["wallet_id"],
                    amount=amount,
                    release=locked["amount"],
                    allow_partial=True,
                    kind=kind,
                    key=key,
                    reference=ref,
                    actor_id=None,
                    reason="",
                    hold_id=hold_id,
                    corrects_id=None,
                    now=now,
                )
                return charge
    existing = Hold.objects.filter(pk=hold_id).first()
    if existing is None:
        raise HoldNotFound(hold_id=hold_id)
    return _raise_not_active(existing, amount=amount)


def _hold_end(
    *, hold_id: int, status: str, now: dt.datetime, only_due: bool = False
) -> Hold | None:
    """Move an active hold to released/expired and return its credits to available."""
    with transaction.atomic():
        filters = Q(pk=hold_id, status=Hold.Status.ACTIVE)
        if only_due:
            filters &= Q(expires_at__lte=now)
        hold = Hold.objects.select_for_update().filter(filters).first()
        if hold is None:
            return None
        Hold.objects.filter(pk=hold_id).update(status=status, settled_at=now)
        Wallet.objects.filter(pk=hold.wallet_id).update(held=F("held") - hold.amount)
        hold.status = status
        hold.settled_at = now
        return hold


def hold_release(*, hold: Hold | int, now: dt.datetime | None = None) -> Hold:
    """Give a hold's credits back (the request failed before producing anything).

    Idempotent: releasing a released or expired hold returns it unchanged; releasing a
    captured hold raises ``HoldAlreadyCaptured``.
    """
    hold_id = _hold_id(hold)
    released = _hold_end(hold_id=hold_id, status=Hold.Status.RELEASED, now=_now(now))
    if released is not None:
        return released
    existing = Hold.objects.filter(pk=hold_id).first()
    if existing is None:
        raise HoldNotFound(hold_id=hold_id)
    if existing.status == Hold.Status.CAPTURED:
        raise HoldAlreadyCaptured(hold_id=hold_id, captured_amount=existing.captured_amount)
    return existing


def holds_expire(*, now: dt.datetime | None = None, batch_size: int = 1000) -> int:
    """Expire active holds past their ``expires_at`` (left behind by crashed requests).
    Safe to run concurrently and repeatedly; returns how many holds it expired."""
    now = _now(now)
    due = list(
        Hold.objects.filter(status=Hold.Status.ACTIVE, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("id", flat=True)[:batch_size]
    )
    return sum(
        1
        for hold_id in due
        if _hold_end(hold_id=hold_id, status=Hold.Status.EXPIRED, now=now, only_due=True)
    )


# --- Expiry, adjustments, reversals -----------------------------------------------------


def _expire_wallet_lots(*, wallet_id: int, now: dt.datetime) -> int:
    with transaction.atomic():
        wallet = _lock_wallet(wallet_id)
        lots = list(
            CreditLot.objects.select_for_update()
            .filter(wallet_id=wallet_id, has_credits=True, expires_at__lte=now)
            .order_by(*lot_burn_order())
        )
        balance = wallet.balance
        for lot in lots:
            balance -= lot.remaining
            CreditLot.objects.filter(pk=lot.pk).update(remaining=0, expired_at=now)
            _write_entry(
                wallet_id=wallet_id,
                kind=Kind.EXPIRY,
                amount=-lot.remaining,
                balance_after=balance,
                key=f"lot-expiry:{lot.pk}",
                reference=Ref.to(lot),
                now=now,
                lot_id=lot.pk,
            )
        next_expiry = CreditLot.objects.filter(
            wallet_id=wallet_id, has_credits=True, expires_at__isnull=False
        ).aggregate(m=Min("expires_at"))["m"]
        Wallet.objects.filter(pk=wallet_id).update(balance=balance, next_expiry_at=next_expiry)
        return len(lots)


def lots_expire(
    *, now: dt.datetime | None = None, wallet: Wallet | int | None = None, batch_size: int = 500
) -> int:
    """Write an expiry entry for every lot past its expiry with credits left, zeroing it.

    Each lot expires once (its entry's key is ``lot-expiry:<id>``); safe to re-run.
    Returns the number of lots expired.
    """
    now = _now(now)
    due = CreditLot.objects.filter(has_credits=True, expires_at__lte=now)
    if wallet is not None:
        due = due.filter(wallet_id=_wallet_id(wallet))
    wallet_ids = list(due.values_list("wallet_id", flat=True).distinct()[:batch_size])
    return sum(_expire_wallet_lots(wallet_id=wallet_id, now=now) for wallet_id in wallet_ids)


def wallet_adjust(
    *,
    wallet: Wallet | int,
    amount: int,
    reason: str,
    actor: Any,
    idempotency_key: str,
    category: str = Category.ADJUSTMENT,
    expires_at: dt.datetime | None = None,
    corrects: LedgerEntry | None = None,
    now: dt.datetime | None = None,
) -> LedgerEntry:
    """A staff correction of a balance, up (a new lot of ``category``) or down (burning lots
    like a debit, never below zero and never into credits held by requests in flight).

    ``reason`` and ``actor`` are mandatory; both are kept on the entry.
    """
    if not reason or not reason.strip():
        raise ReasonRequired()
    if actor is None or getattr(actor, "pk", None) is None:
        raise ReasonRequired("An adjustment must name the staff member who made it.")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
        raise InvalidAmount("The adjustment must be a non-zero whole number of micro-credits.")
    money.validate_micro(abs(amount))
    reference = Ref("staff", str(actor.pk))
    if amount > 0:
        return wallet_credit(
            wallet=wallet,
            amount=amount,
            category=category,
            kind=Kind.ADJUSTMENT,
            idempotency_key=idempotency_key,
            reference=reference,
            expires_at=expires_at,
            actor=actor,
            reason=reason.strip(),
            now=now,
        )
    try:
        charge = _debit(
            wallet=wallet,
            amount=-amount,
            kind=Kind.ADJUSTMENT,
            key=_require_key(idempotency_key),
            reference=reference,
            allow_partial=False,
            actor=actor,
            reason=reason.strip(),
            corrects=corrects,
            now=_now(now),
            require_open=False,
        )
    except InsufficientCredits as exc:
        raise BalanceWouldGoNegative(**exc.detail) from exc
    assert charge.entry_id is not None  # a refused debit raised above
    return LedgerEntry.objects.get(pk=charge.entry_id)


def lots_reverse(
    *,
    lots: Sequence[CreditLot],
    idempotency_key: str,
    reference: Ref,
    amounts: Mapping[int, int] | None = None,
    kind: str = Kind.REVERSAL,
    actor: Any = None,
    reason: str = "",
    now: dt.datetime | None = None,
) -> list[LedgerEntry]:
    """Take back credits of specific lots (a refunded top-up and its bonus, a reversed
    reward): all remaining credits of each lot, or ``amounts[lot.pk]`` of it.

    All or nothing: if a lot has fewer credits left than asked for, or the credits are
    reserved by requests in flight, ``LotNotReversible`` is raised and nothing changes.
    One entry per lot, keyed ``<idempotency_key>:<lot id>``; a replay returns them.
    """
    if not lots:
        return []
    key = _require_key(idempotency_key)
    reference = _require_ref(reference)
    now = _now(now)
    wallet_ids = {lot.wallet_id for lot in lots}
    if len(wallet_ids) != 1:
        raise ValueError("All lots reversed together must belong to one wallet.")
    (wallet_id,) = wallet_ids
    lot_ids = sorted(lot.pk for lot in lots)
    keys = {lot_id: f"{key}:{lot_id}" for lot_id in lot_ids}
    replayed = list(LedgerEntry.objects.filter(idempotency_key__in=keys.values()).order_by("id"))
    if replayed:
        return replayed
    if amounts is not None:
        for lot_id in lot_ids:
            money.validate_micro(amounts.get(lot_id, 0), allow_zero=True)
    try:
        with transaction.atomic():
            wallet = _lock_wallet(wallet_id)
            locked = {
                lot.pk: lot
                for lot in CreditLot.objects.select_for_update().filter(
                    pk__in=lot_ids, wallet_id=wallet_id
                )
            }
            if len(locked) != len(lot_ids):
                raise LotNotReversible("A lot does not belong to this wallet.")
            takes = {
                lot_id: (
                    amounts.get(lot_id, 0) if amounts is not None else locked[lot_id].remaining
                )
                for lot_id in lot_ids
            }
            short = {
                lot_id: locked[lot_id].remaining
                for lot_id, take in takes.items()
                if take > locked[lot_id].remaining
            }
            if short:
                raise LotNotReversible(remaining={str(k): v for k, v in short.items()})
            total = sum(takes.values())
            if total > wallet.balance - wallet.held:
                raise LotNotReversible(
                    "Some of these credits are reserved by requests in progress.",
                    available=wallet.balance - wallet.held,
                    requested=total,
                )
            balance = wallet.balance
            entries = []
            for lot_id, take in takes.items():
                if take == 0:
                    continue
                balance -= take
                CreditLot.objects.filter(pk=lot_id).update(remaining=F("remaining") - take)
                entries.append(
                    _write_entry(
                        wallet_id=wallet_id,
                        kind=kind,
                        amount=-take,
                        balance_after=balance,
                        key=keys[lot_id],
                        reference=reference,
                        now=now,
                        lot_id=lot_id,
                        actor_id=getattr(actor, "pk", None),
                        reason=reason,
                    )
                )
            Wallet.objects.filter(pk=wallet_id).update(balance=balance)
            return entries
    except IntegrityError:
        replayed = list(
            LedgerEntry.objects.filter(idempotency_key__in=keys.values()).order_by("id")
        )
        if replayed:
            return replayed
        raise


def wallet_set_low_balance_threshold(*, wallet: Wallet, threshold_micro: int | None) -> Wallet:
    """Set the owner's low-balance threshold (None: the site default). Moves no credits."""
    if threshold_micro is not None:
        threshold_micro = money.validate_micro(threshold_micro, allow_zero=True, field="threshold")
    Wallet.objects.filter(pk=wallet.pk).update(low_balance_threshold_micro=threshold_micro)
    wallet.low_balance_threshold_micro = threshold_micro
    return wallet


def wallet_set_min_balance(*, wallet: Wallet, min_balance_micro: int | None) -> Wallet:
    """The wallet's own minimum available balance to start a request (``None``: the site
    default, ``METERING_MIN_BALANCE_CREDITS``)."""
    if min_balance_micro is not None:
        min_balance_micro = money.validate_micro(
            min_balance_micro, allow_zero=True, field="min_balance"
        )
    Wallet.objects.filter(pk=wallet.pk).update(min_balance_micro=min_balance_micro)
    wallet.min_balance_micro = min_balance_micro
    return wallet
