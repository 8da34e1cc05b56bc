from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from accounts.models import Organization, User
from billing.models import TopUpOrder
from tests.helpers import assert_ledger_ok, credit, micro, refresh
from usage.models import UsageRecord
from wallet import services
from wallet.models import CreditLot, Hold, LedgerEntry, Wallet
from wallet.verify import wallet_verify

pytestmark = pytest.mark.django_db


def invariants(wallet: Wallet) -> set[str]:
    return {v.invariant for v in wallet_verify(wallet_ids=[wallet.pk])}


def test_a_clean_ledger_has_no_violations(wallet: Wallet) -> None:
    credit(wallet, "5")
    services.hold_create(wallet=wallet, amount=micro("1"), request_id="r")
    assert invariants(wallet) == set()


def test_verify_catches_a_balance_that_disagrees_with_lots_and_entries(wallet: Wallet) -> None:
    credit(wallet, "5")
    Wallet.objects.filter(pk=wallet.pk).update(balance=micro("6"))
    assert "1-balance" in invariants(wallet)


def test_verify_catches_held_credits_without_a_hold(wallet: Wallet) -> None:
    credit(wallet, "5")
    Wallet.objects.filter(pk=wallet.pk).update(held=micro("1"))
    assert invariants(wallet) == {"2-held"}


def test_verify_catches_an_edited_entry(wallet: Wallet) -> None:
    credit(wallet, "5")
    credit(wallet, "2")
    with connection.cursor() as cursor:  # simulate tampering around the trigger
        cursor.execute("SET LOCAL session_replication_role = replica")  # triggers off
        cursor.execute(
            "UPDATE wallet_ledgerentry SET balance_after = balance_after + 1 "
            "WHERE id = (SELECT MAX(id) FROM wallet_ledgerentry)"
        )
        cursor.execute("SET LOCAL session_replication_role = DEFAULT")
    assert "3-append-only" in invariants(wallet)


def test_verify_catches_a_lot_that_could_be_spent_after_expiring(wallet: Wallet) -> None:
    credit(
        wallet,
        "5",
        CreditLot.Category.PROMOTIONAL,
        expires_at=timezone.now() + dt.timedelta(days=1),
    )
    Wallet.objects.filter(pk=wallet.pk).update(next_expiry_at=None)
    assert invariants(wallet) == {"6-expiry"}


def test_verify_catches_a_lot_without_its_credit_entry(wallet: Wallet) -> None:
    credit(wallet, "5")
    CreditLot.objects.filter(wallet=wallet).update(amount=micro("9"))
    assert "5-lot-origin" in invariants(wallet)


def test_verify_catches_a_captured_hold_that_does_not_add_up(wallet: Wallet) -> None:
    credit(wallet, "5")
    held = services.hold_create(wallet=wallet, amount=micro("1"), request_id="r")
    services.hold_capture(hold=held, amount=micro("1"))
    Hold.objects.filter(pk=held.pk).update(shortfall=5)
    assert invariants(wallet) == {"hold"}


def test_wallet_verify_command_reports_and_exits_non_zero(wallet: Wallet) -> None:
    credit(wallet, "5")
    out = StringIO()
    call_command("wallet_verify", stdout=out)
    assert "Ledger OK" in out.getvalue()
    Wallet.objects.filter(pk=wallet.pk).update(balance=1)
    err = StringIO()
    with pytest.raises(CommandError, match="violation"):
        call_command("wallet_verify", "--wallet", str(wallet.pk), stderr=err)
    assert "[1-balance]" in err.getvalue()


def test_grant_credits_command(user: User) -> None:
    out = StringIO()
    call_command(
        "grant_credits",
        "--email",
        user.email.upper(),
        "--credits",
        "12.5",
        "--category",
        "promotional",
        "--reason",
        "launch promo",
        "--expires",
        "2099-01-01",
        "--idempotency-key",
        "g1",
        stdout=out,
    )
    call_command(
        "grant_credits",
        "--email",
        user.email,
        "--credits",
        "12.5",
        "--category",
        "promotional",
        "--reason",
        "launch promo",
        "--expires",
        "2099-01-01",
        "--idempotency-key",
        "g1",
        stdout=out,
    )
    wallet = refresh(Wallet.objects.get(user=user))
    assert wallet.balance == micro("12.5")
    lot = CreditLot.objects.get(wallet=wallet)
    assert lot.expires_at == dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    entry = LedgerEntry.objects.get(wallet=wallet)
    assert (entry.reason, entry.reference_type) == ("launch promo", "operator")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email", "nobody@example.com"], "No user"),
        (["--credits", "-3"], "invalid_amount"),
        (["--credits", "abc"], "invalid_amount"),
        (["--reason", " "], "reason"),
        (["--expires", "yesterday"], "not a date"),
        (["--expires", "2001-01-01"], "invalid_expiry"),
    ],
)
def test_grant_credits_refuses_bad_input(user: User, args: list[str], message: str) -> None:
    base = {"--email": user.email, "--credits": "1", "--category": "paid", "--reason": "r"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    with pytest.raises(CommandError, match=message):
        call_command("grant_credits", *[x for pair in base.items() for x in pair])
    assert not LedgerEntry.objects.exists()


def test_seed_demo_is_repeatable_and_leaves_a_clean_ledger() -> None:
    call_command("seed_demo", "--quiet")
    call_command("seed_demo", "--quiet")
    demo = User.objects.get(email="demo@example.com")
    # 30 credits granted plus billing's demo top-up, less the demo usage records (seeded
    # once) charged against them.
    demo_topup = TopUpOrder.objects.get(user=demo)
    charged = sum(UsageRecord.objects.filter(user=demo).values_list("charged_micro", flat=True))
    assert UsageRecord.objects.filter(user=demo).count() == 8 and charged > 0
    assert refresh(Wallet.objects.get(user=demo)).balance == (
        micro("30") + demo_topup.total_micro - charged
    )
    org = Organization.objects.get(slug="demo-team")
    assert refresh(Wallet.objects.get(organization=org)).balance == micro("200")
    assert org.memberships.count() == 2
    assert_ledger_ok()
