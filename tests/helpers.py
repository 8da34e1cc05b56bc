from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from wallet import money, services
from wallet.models import CreditLot, Hold, LedgerEntry, Wallet
from wallet.verify import wallet_verify

_keys = itertools.count()


def key(prefix: str = "test") -> str:
    return f"{prefix}-{next(_keys)}"


def credit(
    wallet: Wallet,
    credits: str | int,
    category: str = CreditLot.Category.PAID,
    **kwargs: Any,
) -> LedgerEntry:
    kwargs.setdefault("idempotency_key", key("credit"))
    kwargs.setdefault("reference", services.Ref("test", "credit"))
    return services.wallet_credit(
        wallet=wallet, amount=money.credits_to_micro(credits), category=category, **kwargs
    )


def micro(credits: str | int) -> int:
    return money.credits_to_micro(credits, allow_zero=True)


def ledger_state(wallet: Wallet) -> dict[str, Any]:
    """Everything a money operation could change about a wallet, for "nothing changed"."""
    fresh = Wallet.objects.get(pk=wallet.pk)
    return {
        "balance": fresh.balance,
        "held": fresh.held,
        "status": fresh.status,
        "lots": list(
            CreditLot.objects.filter(wallet=wallet).order_by("id").values_list("id", "remaining")
        ),
        "entries": list(
            LedgerEntry.objects.filter(wallet=wallet).order_by("id").values_list("id", "amount")
        ),
        "holds": list(
            Hold.objects.filter(wallet=wallet).order_by("id").values_list("id", "status", "amount")
        ),
    }


def assert_ledger_ok(*wallets: Wallet, now: dt.datetime | None = None) -> None:
    violations = wallet_verify(wallet_ids=[w.pk for w in wallets] or None, now=now)
    assert violations == [], "\n".join(map(str, violations))


def refresh(wallet: Wallet) -> Wallet:
    return Wallet.objects.get(pk=wallet.pk)
