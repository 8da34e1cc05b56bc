from __future__ import annotations

import pytest
from django.core.management import call_command

from billing.models import TopUpOrder
from tests.helpers import assert_ledger_ok, micro
from wallet.models import CreditLot, Wallet

pytestmark = pytest.mark.django_db


def test_seed_demo_adds_one_completed_top_up_and_is_repeatable() -> None:
    call_command("seed_demo", "--quiet")
    call_command("seed_demo", "--quiet")
    # (The referrals demo adds a second order, for the invited friend.)
    order = TopUpOrder.objects.get(user__email="demo@example.com")
    assert (order.status, order.user.email, order.payment_method) == (
        "completed",
        "demo@example.com",
        "bank_transfer",
    )
    wallet = Wallet.objects.get(user=order.user)
    topup_lots = CreditLot.objects.filter(wallet=wallet, reference_type="billing.topuporder")
    assert sorted(topup_lots.values_list("amount", flat=True)) == [micro("3"), micro("100")]
    assert_ledger_ok(wallet)
