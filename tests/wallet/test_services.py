"""Unit tests of every wallet service and every bad input, on PostgreSQL. Tests that touch
the settle step run on both engines (the PL/pgSQL function and the Python twin)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from config.errors import IdempotencyConflict
from tests.helpers import assert_ledger_ok, credit, key, ledger_state, micro, refresh
from wallet import services
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
from wallet.models import CreditLot, Hold, LedgerEntry, Wallet

pytestmark = pytest.mark.django_db
Category = CreditLot.Category
REF = services.Ref("test", "1")
NOW = timezone.now()


def debit(wallet: Wallet, credits: str, **kwargs: object) -> services.Charge:
    kwargs.setdefault("idempotency_key", key("debit"))
    kwargs.setdefault("reference", REF)
    return services.wallet_debit(wallet=wallet, amount=micro(credits), **kwargs)  # type: ignore[arg-type]


def hold(wallet: Wallet, credits: str, **kwargs: object) -> Hold:
    kwargs.setdefault("request_id", key("req"))
    return services.hold_create(wallet=wallet, amount=micro(credits), **kwargs)  # type: ignore[arg-type]


# --- credit -------------------------------------------------------------------------


def test_credit_adds_a_lot_and_an_entry(wallet: Wallet) -> None:
    entry = credit(wallet, "10", category=Category.BONUS)
    wallet = refresh(wallet)
    assert wallet.balance == micro("10")
    assert entry.amount == micro("10")
    assert entry.balance_after == micro("10")
    assert entry.kind == LedgerEntry.Kind.BONUS
    assert entry.lot is not None
    assert (entry.lot.category, entry.lot.remaining) == (Category.BONUS, micro("10"))
    assert_ledger_ok(wallet)


def test_credit_with_the_same_key_credits_once_and_returns_the_first_entry(wallet: Wallet) -> None:
    first = credit(wallet, "10", idempotency_key="k1")
    second = credit(wallet, "10", idempotency_key="k1")
    assert first.pk == second.pk
    assert refresh(wallet).balance == micro("10")


def test_credit_key_reused_for_another_amount_is_a_conflict(wallet: Wallet) -> None:
    credit(wallet, "10", idempotency_key="k1")
    before = ledger_state(wallet)
    with pytest.raises(IdempotencyConflict) as error:
        credit(wallet, "11", idempotency_key="k1")
    assert error.value.code == "idempotency_conflict"
    assert ledger_state(wallet) == before


@pytest.mark.parametrize(
    ("amount", "error_type"),
    [
        (0, InvalidAmount),
        (-5, InvalidAmount),
        (1.5, InvalidAmount),
        (Decimal("1"), InvalidAmount),
        ("100", InvalidAmount),
        (True, InvalidAmount),
        (10**18, InvalidAmount),
    ],
)
def test_credit_refuses_bad_amounts_and_changes_nothing(
    wallet: Wallet, amount: object, error_type: type[Exception]
) -> None:
    before = ledger_state(wallet)
    with pytest.raises(error_type) as error:
        services.wallet_credit(
            wallet=wallet,
            amount=amount,
            category=Category.PAID,  # type: ignore[arg-type]
            idempotency_key=key(),
            reference=REF,
        )
    assert error.value.code == "invalid_amount"  # type: ignore[attr-defined]
    assert ledger_state(wallet) == before


def test_credit_refuses_unknown_category_past_expiry_missing_key(wallet: Wallet) -> None:
    before = ledger_state(wallet)
    with pytest.raises(InvalidCategory):
        services.wallet_credit(
            wallet=wallet, amount=1, category="gold", idempotency_key=key(), reference=REF
        )
    with pytest.raises(InvalidExpiry):
        services.wallet_credit(
            wallet=wallet,
            amount=1,
            category=Category.PROMOTIONAL,
            idempotency_key=key(),
            reference=REF,
            expires_at=timezone.now() - dt.timedelta(seconds=1),
        )
    with pytest.raises(IdempotencyKeyRequired):
        services.wallet_credit(
            wallet=wallet, amount=1, category=Category.PAID, idempotency_key="  ", reference=REF
        )
    assert ledger_state(wallet) == before


def test_credit_to_unknown_or_closed_wallet_is_refused(wallet: Wallet) -> None:
    with pytest.raises(WalletNotFound) as error:
        services.wallet_credit(
            wallet=987654321, amount=1, category=Category.PAID, idempotency_key=key(), reference=REF
        )
    assert error.value.status_code == 404
    services.wallet_set_status(wallet=wallet, status=Wallet.Status.CLOSED)
    before = ledger_state(wallet)
    with pytest.raises(WalletClosed):
        credit(wallet, "1")
    assert ledger_state(wallet) == before
    assert not LedgerEntry.objects.exists()


# --- debit and the burn order ----------------------------------------------------------


def test_debit_burns_lots_in_the_fixed_order(wallet: Wallet, engine: str) -> None:
    soon = timezone.now() + dt.timedelta(days=1)
    later = timezone.now() + dt.timedelta(days=30)
    paid_old = credit(wallet, "1", Category.PAID).lot
    paid_new = credit(wallet, "1", Category.PAID).lot
    bonus = credit(wallet, "1", Category.BONUS).lot
    promo = credit(wallet, "1", Category.PROMOTIONAL).lot
    promo_later = credit(wallet, "1", Category.PROMOTIONAL, expires_at=later).lot
    paid_soon = credit(wallet, "1", Category.PAID, expires_at=soon).lot
    urgent = credit(wallet, "1", Category.PAID, priority=10).lot
    expected = [urgent, paid_soon, promo_later, promo, bonus, paid_old, paid_new]
    burned = []
    for _ in expected:
        debit(wallet, "1")
        burned.extend(
            lot
            for lot in expected
            if lot not in burned and CreditLot.objects.get(pk=lot.pk).remaining == 0
        )
    assert burned == expected
    assert refresh(wallet).balance == 0
    assert_ledger_ok(wallet)


def test_debit_spans_several_lots(wallet: Wallet, engine: str) -> None:
    promo = credit(wallet, "2", Category.PROMOTIONAL).lot
    paid = credit(wallet, "5", Category.PAID).lot
    charge = debit(wallet, "3.5")
    assert (charge.charged, charge.shortfall, charge.balance_after) == (
        micro("3.5"),
        0,
        micro("3.5"),
    )
    assert CreditLot.objects.get(pk=promo.pk).remaining == 0
    assert CreditLot.objects.get(pk=paid.pk).remaining == micro("3.5")
    entry = LedgerEntry.objects.get(pk=charge.entry_id)
    assert (entry.kind, entry.amount, entry.balance_after) == ("usage", -micro("3.5"), micro("3.5"))
    assert_ledger_ok(wallet)


def test_debit_more_than_available_is_refused_and_changes_nothing(
    wallet: Wallet, engine: str
) -> None:
    credit(wallet, "5")
    hold(wallet, "2")
    before = ledger_state(wallet)
    with pytest.raises(InsufficientCredits) as error:
        debit(wallet, "3.000001")
    assert error.value.status_code == 402
    assert error.value.detail["limit_source"] == "wallet"
    assert error.value.detail["available"] == micro("3")
    assert ledger_state(wallet) == before


def test_partial_debit_charges_what_is_available_and_reports_the_shortfall(
    wallet: Wallet, engine: str
) -> None:
    credit(wallet, "5")
    charge = debit(wallet, "8", allow_partial=True)
    assert (charge.charged, charge.shortfall, charge.balance_after) == (micro("5"), micro("3"), 0)
    nothing = debit(wallet, "1", allow_partial=True)
    assert (nothing.entry_id, nothing.charged, nothing.shortfall) == (None, 0, micro("1"))
    assert_ledger_ok(wallet)


def test_debit_replay_returns_the_first_result(wallet: Wallet, engine: str) -> None:
    credit(wallet, "5")
    first = debit(wallet, "2", idempotency_key="d1")
    again = debit(wallet, "2", idempotency_key="d1")
    assert again.replayed and again.entry_id == first.entry_id
    assert refresh(wallet).balance == micro("3")
    with pytest.raises(IdempotencyConflict):
        debit(wallet, "3", idempotency_key="d1")


def test_debit_refuses_bad_input(wallet: Wallet, engine: str) -> None:
    credit(wallet, "5")
    before = ledger_state(wallet)
    for amount in (0, -1, 2.0, "1", None):
        with pytest.raises(InvalidAmount):
            services.wallet_debit(
                wallet=wallet,
                amount=amount,
                idempotency_key=key(),  # type: ignore[arg-type]
                reference=REF,
            )
    with pytest.raises(InvalidCategory):
        debit(wallet, "1", kind=LedgerEntry.Kind.TOPUP)
    with pytest.raises(WalletNotFound):
        services.wallet_debit(wallet=10**9, amount=1, idempotency_key=key(), reference=REF)
    assert ledger_state(wallet) == before
    services.wallet_set_status(wallet=wallet, status=Wallet.Status.CLOSED)
    with pytest.raises(WalletClosed):
        debit(wallet, "1")


def test_lots_past_expiry_are_frozen_until_the_expiry_job(wallet: Wallet, engine: str) -> None:
    start = timezone.now()
    promo = credit(
        wallet, "4", Category.PROMOTIONAL, now=start, expires_at=start + dt.timedelta(hours=1)
    ).lot
    credit(wallet, "1", Category.PAID, now=start)
    later = start + dt.timedelta(hours=2)
    with pytest.raises(InsufficientCredits) as error:
        debit(wallet, "2", now=later)
    assert error.value.detail["available"] == micro("1")
    with pytest.raises(InsufficientCredits):
        hold(wallet, "2", now=later)
    charge = debit(wallet, "1", now=later)
    assert charge.charged == micro("1")
    assert CreditLot.objects.get(pk=promo.pk).remaining == micro("4")
    assert services.lots_expire(now=later) == 1
    wallet = refresh(wallet)
    assert wallet.balance == 0 and wallet.next_expiry_at is None
    assert_ledger_ok(wallet, now=later)


# --- holds ----------------------------------------------------------------------------


def test_hold_reserves_available_credits(wallet: Wallet) -> None:
    credit(wallet, "10")
    held = hold(wallet, "4", request_id="r1")
    wallet = refresh(wallet)
    assert (wallet.balance, wallet.held, wallet.available) == (micro("10"), micro("4"), micro("6"))
    assert held.status == Hold.Status.ACTIVE
    assert_ledger_ok(wallet)


def test_hold_retry_returns_the_first_hold(wallet: Wallet) -> None:
    credit(wallet, "10")
    first = hold(wallet, "4", request_id="r1")
    second = hold(wallet, "4", request_id="r1")
    assert first.pk == second.pk
    assert refresh(wallet).held == micro("4")
    before = ledger_state(wallet)
    with pytest.raises(IdempotencyConflict):
        hold(wallet, "5", request_id="r1")
    assert ledger_state(wallet) == before


def test_hold_beyond_available_is_refused_and_changes_nothing(wallet: Wallet) -> None:
    credit(wallet, "10")
    hold(wallet, "6")
    before = ledger_state(wallet)
    with pytest.raises(InsufficientCredits) as error:
        hold(wallet, "4.000001")
    assert error.value.detail == {
        "limit_source": "wallet",
        "available": micro("4"),
        "requested": micro("4.000001"),
    }
    assert ledger_state(wallet) == before


def test_hold_refuses_bad_input(wallet: Wallet) -> None:
    credit(wallet, "10")
    before = ledger_state(wallet)
    with pytest.raises(InvalidAmount):
        services.hold_create(wallet=wallet, amount=0, request_id="r")
    with pytest.raises(InvalidAmount):
        services.hold_create(wallet=wallet, amount=-1, request_id="r")
    with pytest.raises(IdempotencyKeyRequired):
        services.hold_create(wallet=wallet, amount=1, request_id="")
    with pytest.raises(InvalidExpiry):
        services.hold_create(
            wallet=wallet,
            amount=1,
            request_id="r",
            expires_at=timezone.now() - dt.timedelta(seconds=1),
        )
    with pytest.raises(WalletNotFound):
        services.hold_create(wallet=10**9, amount=1, request_id="r")
    assert ledger_state(wallet) == before
    services.wallet_set_status(wallet=wallet, status=Wallet.Status.CLOSED)
    with pytest.raises(WalletClosed):
        hold(wallet, "1")
    assert ledger_state(wallet) | {"status": "active"} == before


def test_capture_charges_usage_and_releases_the_rest(wallet: Wallet, engine: str) -> None:
    credit(wallet, "10")
    held = hold(wallet, "4")
    charge = services.hold_capture(hold=held, amount=micro("1.5"))
    assert (charge.charged, charge.shortfall, charge.balance_after) == (
        micro("1.5"),
        0,
        micro("8.5"),
    )
    wallet = refresh(wallet)
    assert (wallet.balance, wallet.held) == (micro("8.5"), 0)
    settled = Hold.objects.get(pk=held.pk)
    assert (settled.status, settled.captured_amount, settled.capture_requested) == (
        Hold.Status.CAPTURED,
        micro("1.5"),
        micro("1.5"),
    )
    assert LedgerEntry.objects.get(idempotency_key=settled.capture_key).pk == charge.entry_id
    assert_ledger_ok(wallet)


def test_capture_above_the_hold_uses_available_credits(wallet: Wallet, engine: str) -> None:
    credit(wallet, "10")
    held = hold(wallet, "1")
    charge = services.hold_capture(hold=held, amount=micro("3"))
    assert (charge.charged, charge.shortfall) == (micro("3"), 0)
    assert refresh(wallet).balance == micro("7")


def test_capture_beyond_hold_and_available_records_a_shortfall(wallet: Wallet, engine: str) -> None:
    credit(wallet, "5")
    first = hold(wallet, "2")
    second = hold(wallet, "2")
    charge = services.hold_capture(hold=first, amount=micro("4"))
    # 2 held by this request + 1 free; the other request's 2 stay reserved.
    assert (charge.charged, charge.shortfall, charge.balance_after) == (
        micro("3"),
        micro("1"),
        micro("2"),
    )
    assert Hold.objects.get(pk=first.pk).shortfall == micro("1")
    last = services.hold_capture(hold=second, amount=micro("9"))
    assert (last.charged, last.shortfall, last.balance_after) == (micro("2"), micro("7"), 0)
    wallet = refresh(wallet)
    assert (wallet.balance, wallet.held) == (0, 0)
    assert_ledger_ok(wallet)


def test_capture_twice_charges_once(wallet: Wallet, engine: str) -> None:
    credit(wallet, "10")
    held = hold(wallet, "4")
    first = services.hold_capture(hold=held, amount=micro("2"))
    again = services.hold_capture(hold=held, amount=micro("2"))
    assert again.replayed and (again.entry_id, again.charged) == (first.entry_id, first.charged)
    before = ledger_state(wallet)
    with pytest.raises(HoldAlreadyCaptured) as error:
        services.hold_capture(hold=held, amount=micro("3"))
    assert error.value.code == "hold_already_captured"
    assert ledger_state(wallet) == before
    assert refresh(wallet).balance == micro("8")


def test_capture_of_released_expired_or_unknown_hold_is_refused(
    wallet: Wallet, engine: str
) -> None:
    credit(wallet, "10")
    released = hold(wallet, "1")
    services.hold_release(hold=released)
    expiring = hold(wallet, "1", expires_at=timezone.now() + dt.timedelta(seconds=30))
    assert services.holds_expire(now=timezone.now() + dt.timedelta(minutes=1)) == 1
    before = ledger_state(wallet)
    with pytest.raises(HoldReleased):
        services.hold_capture(hold=released, amount=1)
    with pytest.raises(HoldExpired):
        services.hold_capture(hold=expiring, amount=1)
    with pytest.raises(HoldNotFound):
        services.hold_capture(hold=10**9, amount=1)
    for bad in (-1, 1.0, None):
        with pytest.raises(InvalidAmount):
            services.hold_capture(hold=released, amount=bad)  # type: ignore[arg-type]
    assert ledger_state(wallet) == before


def test_capture_of_zero_writes_no_entry_and_frees_the_hold(wallet: Wallet, engine: str) -> None:
    credit(wallet, "10")
    held = hold(wallet, "4")
    charge = services.hold_capture(hold=held, amount=0)
    assert (charge.entry_id, charge.charged) == (None, 0)
    wallet = refresh(wallet)
    assert (wallet.balance, wallet.held) == (micro("10"), 0)
    assert_ledger_ok(wallet)


def test_release_is_idempotent_and_refused_after_capture(wallet: Wallet, engine: str) -> None:
    credit(wallet, "10")
    held = hold(wallet, "4")
    services.hold_release(hold=held)
    again = services.hold_release(hold=held)
    assert again.status == Hold.Status.RELEASED
    assert refresh(wallet).held == 0
    captured = hold(wallet, "1")
    services.hold_capture(hold=captured, amount=1)
    with pytest.raises(HoldAlreadyCaptured):
        services.hold_release(hold=captured)
    with pytest.raises(HoldNotFound):
        services.hold_release(hold=10**9)
    assert_ledger_ok(wallet)


def test_holds_expire_only_past_due_and_twice_is_once(wallet: Wallet) -> None:
    credit(wallet, "10")
    start = timezone.now()
    due = hold(wallet, "1", expires_at=start + dt.timedelta(minutes=1), now=start)
    fresh = hold(wallet, "2", expires_at=start + dt.timedelta(hours=1), now=start)
    at = start + dt.timedelta(minutes=5)
    assert services.holds_expire(now=at) == 1
    assert services.holds_expire(now=at) == 0
    assert Hold.objects.get(pk=due.pk).status == Hold.Status.EXPIRED
    assert Hold.objects.get(pk=fresh.pk).status == Hold.Status.ACTIVE
    assert refresh(wallet).held == micro("2")
    assert_ledger_ok(wallet)


def test_a_lot_past_expiry_is_not_available_to_new_holds(wallet: Wallet) -> None:
    start = timezone.now()
    credit(wallet, "3", Category.PROMOTIONAL, now=start, expires_at=start + dt.timedelta(minutes=1))
    credit(wallet, "2", Category.PAID, now=start)
    later = start + dt.timedelta(minutes=2)
    assert hold(wallet, "2", now=later).amount == micro("2")
    with pytest.raises(InsufficientCredits):
        hold(wallet, "0.5", now=later)


# --- expiry ---------------------------------------------------------------------------


def test_lots_expire_writes_entries_once(wallet: Wallet) -> None:
    start = timezone.now()
    early = credit(
        wallet, "3", Category.PROMOTIONAL, now=start, expires_at=start + dt.timedelta(days=1)
    ).lot
    late = credit(
        wallet, "2", Category.PROMOTIONAL, now=start, expires_at=start + dt.timedelta(days=10)
    ).lot
    credit(wallet, "1", Category.PAID, now=start)
    debit(wallet, "1", now=start)  # burns the soonest-expiring lot first
    at = start + dt.timedelta(days=2)
    assert services.lots_expire(now=at) == 1
    assert services.lots_expire(now=at) == 0
    entry = LedgerEntry.objects.get(kind=LedgerEntry.Kind.EXPIRY)
    assert (entry.amount, entry.lot_id) == (-micro("2"), early.pk)
    wallet = refresh(wallet)
    assert wallet.balance == micro("3")
    assert wallet.next_expiry_at == late.expires_at
    assert CreditLot.objects.get(pk=early.pk).expired_at == at
    assert_ledger_ok(wallet, now=at)


# --- adjustments ----------------------------------------------------------------------


def test_adjust_up_and_down_keeps_actor_and_reason(wallet: Wallet, staff, engine: str) -> None:  # type: ignore[no-untyped-def]
    up = services.wallet_adjust(
        wallet=wallet, amount=micro("5"), reason="goodwill", actor=staff, idempotency_key=key()
    )
    assert (up.kind, up.actor_id, up.reason, up.lot.category) == (
        "adjustment",
        staff.pk,
        "goodwill",
        Category.ADJUSTMENT,
    )
    down = services.wallet_adjust(
        wallet=wallet, amount=-micro("2"), reason="double grant", actor=staff, idempotency_key=key()
    )
    assert (down.amount, down.balance_after, down.reference_type) == (
        -micro("2"),
        micro("3"),
        "staff",
    )
    assert_ledger_ok(wallet)


def test_adjust_below_zero_or_into_held_credits_is_refused(
    wallet: Wallet, staff, engine: str
) -> None:  # type: ignore[no-untyped-def]
    credit(wallet, "5")
    hold(wallet, "3")
    before = ledger_state(wallet)
    with pytest.raises(BalanceWouldGoNegative) as error:
        services.wallet_adjust(
            wallet=wallet, amount=-micro("2.5"), reason="x", actor=staff, idempotency_key=key()
        )
    assert error.value.code == "balance_would_go_negative"
    assert error.value.detail["available"] == micro("2")
    assert ledger_state(wallet) == before


def test_adjust_requires_reason_actor_and_amount(wallet: Wallet, staff) -> None:  # type: ignore[no-untyped-def]
    credit(wallet, "5")
    before = ledger_state(wallet)
    with pytest.raises(ReasonRequired) as error:
        services.wallet_adjust(
            wallet=wallet, amount=1, reason=" ", actor=staff, idempotency_key=key()
        )
    assert error.value.code == "reason_required"
    with pytest.raises(ReasonRequired):
        services.wallet_adjust(
            wallet=wallet, amount=1, reason="why", actor=None, idempotency_key=key()
        )
    for amount in (0, 1.5, True, 10**16, -(10**16)):
        with pytest.raises(InvalidAmount):
            services.wallet_adjust(
                wallet=wallet,
                amount=amount,
                reason="why",
                actor=staff,  # type: ignore[arg-type]
                idempotency_key=key(),
            )
    assert ledger_state(wallet) == before


# --- reversals ------------------------------------------------------------------------


def test_lots_reverse_takes_back_remaining_credits_once(wallet: Wallet) -> None:
    paid = credit(wallet, "100", Category.PAID).lot
    bonus = credit(wallet, "3", Category.BONUS).lot
    debit(wallet, "1")  # burns bonus first
    entries = services.lots_reverse(
        lots=[paid, bonus],
        idempotency_key="refund-1",
        reference=services.Ref("billing.topuporder", "7"),
        kind=LedgerEntry.Kind.REFUND,
    )
    assert sorted(e.amount for e in entries) == [-micro("100"), -micro("2")]
    assert refresh(wallet).balance == 0
    again = services.lots_reverse(
        lots=[paid, bonus],
        idempotency_key="refund-1",
        reference=services.Ref("billing.topuporder", "7"),
    )
    assert [e.pk for e in again] == [e.pk for e in entries]
    assert_ledger_ok(wallet)


def test_lots_reverse_partial_amounts(wallet: Wallet) -> None:
    paid = credit(wallet, "100", Category.PAID).lot
    entries = services.lots_reverse(
        lots=[paid], amounts={paid.pk: micro("40")}, idempotency_key=key(), reference=REF
    )
    assert [e.amount for e in entries] == [-micro("40")]
    assert CreditLot.objects.get(pk=paid.pk).remaining == micro("60")


def test_lots_reverse_more_than_left_or_held_is_refused(wallet: Wallet, other_user) -> None:  # type: ignore[no-untyped-def]
    paid = credit(wallet, "10", Category.PAID).lot
    debit(wallet, "4")
    hold(wallet, "5")
    before = ledger_state(wallet)
    with pytest.raises(LotNotReversible) as error:
        services.lots_reverse(
            lots=[paid], amounts={paid.pk: micro("7")}, idempotency_key=key(), reference=REF
        )
    assert error.value.detail["remaining"] == {str(paid.pk): micro("6")}
    with pytest.raises(LotNotReversible) as error:  # 6 left, but 5 reserved by a request
        services.lots_reverse(lots=[paid], idempotency_key=key(), reference=REF)
    assert error.value.detail["available"] == micro("1")
    with pytest.raises(InvalidAmount):
        services.lots_reverse(
            lots=[paid], amounts={paid.pk: -1}, idempotency_key=key(), reference=REF
        )
    other = credit(Wallet.objects.get(user=other_user), "1").lot
    with pytest.raises(ValueError, match="one wallet"):
        services.lots_reverse(lots=[paid, other], idempotency_key=key(), reference=REF)
    assert ledger_state(wallet) == before


# --- append-only ----------------------------------------------------------------------


def test_ledger_entries_cannot_be_updated_or_deleted(wallet: Wallet) -> None:
    entry = credit(wallet, "1")
    with pytest.raises(RuntimeError):
        entry.save()
    with pytest.raises(RuntimeError):
        entry.delete()
    for statement in (
        "UPDATE wallet_ledgerentry SET amount = 2 WHERE id = %s",
        "DELETE FROM wallet_ledgerentry WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, [entry.pk])
    assert LedgerEntry.objects.get(pk=entry.pk).amount == micro("1")


def test_balance_cannot_go_negative_even_by_direct_sql(wallet: Wallet) -> None:
    with pytest.raises(DatabaseError), transaction.atomic():
        Wallet.objects.filter(pk=wallet.pk).update(balance=-1)


def test_low_balance_threshold_defaults_and_can_be_set(wallet: Wallet, settings) -> None:  # type: ignore[no-untyped-def]
    from wallet import selectors

    settings.LOW_BALANCE_THRESHOLD_CREDITS = Decimal("1000")
    assert selectors.wallet_low_balance_threshold(wallet=wallet) == micro("1000")
    assert selectors.wallet_is_low(wallet=refresh(wallet))
    credit(wallet, "20")
    services.wallet_set_low_balance_threshold(wallet=wallet, threshold_micro=micro("15"))
    assert not selectors.wallet_is_low(wallet=refresh(wallet))
    before = ledger_state(wallet)
    for bad in (-1, 1.5, "10"):
        with pytest.raises(InvalidAmount):
            services.wallet_set_low_balance_threshold(wallet=wallet, threshold_micro=bad)  # type: ignore[arg-type]
    assert refresh(wallet).low_balance_threshold_micro == micro("15")
    services.wallet_set_low_balance_threshold(wallet=wallet, threshold_micro=None)
    assert selectors.wallet_low_balance_threshold(wallet=refresh(wallet)) == micro("1000")
    assert ledger_state(wallet) == before
