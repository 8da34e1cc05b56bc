"""Random sequences of every wallet operation keep every invariant, and the PL/pgSQL settle
step agrees exactly with its Python twin.

Each rule runs the same operation on two wallets, one per engine, and compares outcomes
(amounts charged, shortfalls, balances, error codes). After every step both wallets are
checked by ``wallet_verify`` (the code behind ``manage.py wallet_verify``) and must have the
same shape: balance, held, every lot's remaining credits, every entry, every hold's status.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from config.errors import ApplicationError
from tests.factories import UserFactory
from wallet import services
from wallet.models import CreditLot, Hold, LedgerEntry, Wallet
from wallet.verify import wallet_verify

ENGINES = ("pg", "py")
_ids = itertools.count()
amounts = st.integers(min_value=1, max_value=5_000_000)
categories = st.sampled_from(CreditLot.Category.values)


def available_now(wallet: Wallet, now: dt.datetime) -> int:
    """What the wallet's selectors say is available, to check what the services report."""
    from wallet.selectors import wallet_summary

    return wallet_summary(wallet=Wallet.objects.get(pk=wallet.pk), now=now).available


class LedgerMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.wallets = {engine: Wallet.objects.get(user=UserFactory()) for engine in ENGINES}
        self.staff = UserFactory(is_staff=True)
        self.now = timezone.now()
        self.holds: list[dict[str, int]] = []
        self.credit_keys: list[tuple[str, int, str]] = []
        self.run = next(_ids)

    def both(self, operation: Callable[[str, Wallet], Any]) -> Any:
        outcomes = []
        for engine in ENGINES:
            with override_settings(WALLET_PG_FUNCTIONS=engine == "pg"):
                try:
                    outcomes.append(operation(engine, self.wallets[engine]))
                except ApplicationError as error:
                    outcomes.append(("error", error.code))
        assert outcomes[0] == outcomes[1], outcomes
        return outcomes[0]

    def key(self, engine: str, name: str) -> str:
        return f"sm{self.run}-{engine}-{name}-{next(_ids)}"

    @rule(
        amount=amounts,
        category=categories,
        expires_in=st.none() | st.integers(1, 120),
        priority=st.sampled_from([None, 50, 100, 150]),
    )
    def credit(
        self, amount: int, category: str, expires_in: int | None, priority: int | None
    ) -> None:
        name = f"c{next(_ids)}"
        expires_at = self.now + dt.timedelta(minutes=expires_in) if expires_in else None

        def operation(engine: str, wallet: Wallet) -> Any:
            entry = services.wallet_credit(
                wallet=wallet,
                amount=amount,
                category=category,
                idempotency_key=f"{self.run}-{engine}-{name}",
                reference=services.Ref("sm", name),
                expires_at=expires_at,
                priority=priority,
                now=self.now,
            )
            return entry.amount, entry.balance_after

        self.both(operation)
        self.credit_keys.append((name, amount, category))

    @rule(data=st.data())
    def replay_credit(self, data: st.DataObject) -> None:
        if not self.credit_keys:
            return
        name, amount, category = data.draw(st.sampled_from(self.credit_keys))

        def operation(engine: str, wallet: Wallet) -> Any:
            before = Wallet.objects.get(pk=wallet.pk).balance
            services.wallet_credit(
                wallet=wallet,
                amount=amount,
                category=category,
                idempotency_key=f"{self.run}-{engine}-{name}",
                reference=services.Ref("sm", name),
                now=self.now,
            )
            assert Wallet.objects.get(pk=wallet.pk).balance == before
            return True

        self.both(operation)

    @rule(amount=amounts, partial=st.booleans())
    def debit(self, amount: int, partial: bool) -> None:
        def operation(engine: str, wallet: Wallet) -> Any:
            charge = services.wallet_debit(
                wallet=wallet,
                amount=amount,
                allow_partial=partial,
                idempotency_key=self.key(engine, "d"),
                reference=services.Ref("sm", "debit"),
                now=self.now,
            )
            assert charge.charged + charge.shortfall == amount
            assert charge.available_after == available_now(wallet, self.now)
            return charge.charged, charge.shortfall, charge.balance_after, charge.available_after

        self.both(operation)

    @rule(amount=amounts)
    def hold(self, amount: int) -> None:
        created: dict[str, int] = {}

        def operation(engine: str, wallet: Wallet) -> Any:
            held = services.hold_create(
                wallet=wallet,
                amount=amount,
                request_id=self.key(engine, "h"),
                now=self.now,
                expires_at=self.now + dt.timedelta(minutes=30),
            )
            created[engine] = held.pk
            assert held.available_after == available_now(wallet, self.now)
            return held.amount, held.available_after

        if self.both(operation)[0] == amount:
            self.holds.append(created)

    @rule(data=st.data(), amount=st.integers(0, 8_000_000))
    def capture(self, data: st.DataObject, amount: int) -> None:
        if not self.holds:
            return
        pair = data.draw(st.sampled_from(self.holds))

        def operation(engine: str, wallet: Wallet) -> Any:
            charge = services.hold_capture(hold=pair[engine], amount=amount, now=self.now)
            if not charge.replayed:
                assert charge.available_after == available_now(wallet, self.now)
            return (
                charge.charged,
                charge.shortfall,
                charge.balance_after,
                charge.replayed,
                charge.available_after,
            )

        self.both(operation)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.holds:
            return
        pair = data.draw(st.sampled_from(self.holds))
        self.both(
            lambda engine, wallet: services.hold_release(hold=pair[engine], now=self.now).status
        )

    @rule(minutes=st.integers(1, 90))
    def time_passes(self, minutes: int) -> None:
        self.now += dt.timedelta(minutes=minutes)

    @rule()
    def expire(self) -> None:
        def operation(engine: str, wallet: Wallet) -> Any:
            return (
                services.holds_expire(now=self.now) >= 0,
                services.lots_expire(now=self.now, wallet=wallet),
            )

        self.both(operation)

    @rule(amount=st.integers(-5_000_000, 5_000_000).filter(bool))
    def adjust(self, amount: int) -> None:
        def operation(engine: str, wallet: Wallet) -> Any:
            entry = services.wallet_adjust(
                wallet=wallet,
                amount=amount,
                reason="state machine",
                actor=self.staff,
                idempotency_key=self.key(engine, "a"),
                now=self.now,
            )
            return entry.amount, entry.balance_after

        self.both(operation)

    @rule(data=st.data(), whole=st.booleans())
    def reverse(self, data: st.DataObject, whole: bool) -> None:
        index = data.draw(st.integers(0, 50))

        def operation(engine: str, wallet: Wallet) -> Any:
            lots = list(CreditLot.objects.filter(wallet=wallet).order_by("id"))
            if not lots:
                return None
            lot = lots[index % len(lots)]
            amounts = None if whole else {lot.pk: lot.remaining // 2}
            entries = services.lots_reverse(
                lots=[lot],
                amounts=amounts,
                idempotency_key=self.key(engine, "r"),
                reference=services.Ref("sm", "reverse"),
                now=self.now,
            )
            return [e.amount for e in entries]

        self.both(operation)

    @invariant()
    def ledger_is_consistent_and_engines_agree(self) -> None:
        if not hasattr(self, "wallets"):
            return
        shapes = []
        for wallet in self.wallets.values():
            violations = wallet_verify(wallet_ids=[wallet.pk], now=self.now)
            assert violations == [], violations
            fresh = Wallet.objects.get(pk=wallet.pk)
            assert fresh.balance >= 0 and fresh.held >= 0
            shapes.append(
                (
                    fresh.balance,
                    fresh.held,
                    list(
                        CreditLot.objects.filter(wallet=wallet)
                        .order_by("id")
                        .values_list("category", "remaining")
                    ),
                    list(
                        LedgerEntry.objects.filter(wallet=wallet)
                        .order_by("id")
                        .values_list("kind", "amount", "balance_after")
                    ),
                    list(
                        Hold.objects.filter(wallet=wallet)
                        .order_by("id")
                        .values_list("status", "amount", "captured_amount", "shortfall")
                    ),
                )
            )
        assert shapes[0] == shapes[1]


@pytest.mark.django_db
@pytest.mark.slow
def test_random_operation_sequences_keep_every_invariant() -> None:
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
