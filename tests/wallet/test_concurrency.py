"""Real threads, real connections, real commits: what the database guarantees, not mocks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection

from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, credit, micro, refresh
from wallet import services
from wallet.errors import HoldAlreadyCaptured, InsufficientCredits
from wallet.models import Hold, LedgerEntry, Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released at the same instant; return each
    result or the exception it raised."""
    barrier = threading.Barrier(count)

    def call(i: int) -> Any:
        try:
            barrier.wait()
            return work(i)
        except Exception as exc:
            return exc
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


@pytest.fixture
def funded_wallet() -> Wallet:
    wallet = Wallet.objects.get(user=UserFactory())
    credit(wallet, "10")
    return wallet


def test_fifty_threads_hold_and_capture_against_ten_credits(
    funded_wallet: Wallet, engine: str
) -> None:
    def spend(i: int) -> int:
        held = services.hold_create(wallet=funded_wallet, amount=micro("1"), request_id=f"r{i}")
        return services.hold_capture(hold=held, amount=micro("1")).charged

    results = run_together(50, spend)
    succeeded = [r for r in results if r == micro("1")]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert len(succeeded) == 10
    assert len(refused) == 40, [r for r in results if not isinstance(r, int | InsufficientCredits)]
    wallet = refresh(funded_wallet)
    assert (wallet.balance, wallet.held) == (0, 0)
    assert LedgerEntry.objects.filter(wallet=wallet, kind="usage").count() == 10
    assert_ledger_ok(wallet)


def test_twenty_threads_with_one_idempotency_key_credit_once(engine: str) -> None:
    wallet = Wallet.objects.get(user=UserFactory())
    results = run_together(20, lambda i: credit(wallet, "5", idempotency_key="same-key").pk)
    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 1
    assert refresh(wallet).balance == micro("5")
    assert LedgerEntry.objects.filter(wallet=wallet).count() == 1
    assert_ledger_ok(wallet)


def test_twenty_threads_with_one_debit_key_debit_once(funded_wallet: Wallet, engine: str) -> None:
    def spend(i: int) -> tuple[int | None, int]:
        charge = services.wallet_debit(
            wallet=funded_wallet,
            amount=micro("3"),
            idempotency_key="debit-key",
            reference=services.Ref("test", "debit"),
        )
        return charge.entry_id, charge.charged

    results = run_together(20, spend)
    assert len(set(results)) == 1, results
    assert refresh(funded_wallet).balance == micro("7")
    assert_ledger_ok(funded_wallet)


def test_twenty_threads_with_one_request_id_take_one_hold(
    funded_wallet: Wallet, engine: str
) -> None:
    results = run_together(
        20,
        lambda i: (
            services.hold_create(
                wallet=funded_wallet, amount=micro("2"), request_id="one-request"
            ).pk
        ),
    )
    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 1
    assert refresh(funded_wallet).held == micro("2")
    assert Hold.objects.filter(wallet=funded_wallet).count() == 1


def test_ten_threads_capturing_one_hold_charge_once(funded_wallet: Wallet, engine: str) -> None:
    held = services.hold_create(wallet=funded_wallet, amount=micro("4"), request_id="r")
    results = run_together(
        10, lambda i: services.hold_capture(hold=held, amount=micro("3") + (i % 2)).charged
    )
    charged = [r for r in results if isinstance(r, int)]
    conflicts = [r for r in results if isinstance(r, HoldAlreadyCaptured)]
    assert len(charged) + len(conflicts) == 10, results
    wallet = refresh(funded_wallet)
    assert wallet.balance in (micro("7"), micro("7") - 1)
    assert wallet.held == 0
    assert LedgerEntry.objects.filter(wallet=wallet, kind="usage").count() == 1
    assert_ledger_ok(wallet)


def test_credits_debits_and_expiry_racing_keep_the_ledger_consistent(engine: str) -> None:
    wallet = Wallet.objects.get(user=UserFactory())
    credit(wallet, "20")

    def work(i: int) -> object:
        if i % 3 == 0:
            return credit(wallet, "1", idempotency_key=f"c{i}")
        if i % 3 == 1:
            return services.wallet_debit(
                wallet=wallet,
                amount=micro("2"),
                idempotency_key=f"d{i}",
                reference=services.Ref("test", "race"),
            )
        return services.holds_expire() + services.lots_expire()

    results = run_together(30, work)
    assert not [
        r for r in results if isinstance(r, Exception) and not isinstance(r, InsufficientCredits)
    ], results
    assert_ledger_ok(wallet)
