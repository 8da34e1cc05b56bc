"""Sweeps racing each other (two beat schedulers by mistake, a command run by hand during
the scheduled one): each dip still alerts exactly once."""

from __future__ import annotations

import pytest
from django.core import mail

from alerts import services
from alerts.models import Alert
from tests.alerts.conftest import spend
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, credit
from tests.wallet.test_concurrency import run_together
from wallet.models import Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_concurrent_sweeps_alert_each_dip_once() -> None:
    wallets = []
    for _ in range(10):
        wallet = Wallet.objects.get(user=UserFactory())
        credit(wallet, "1500")
        spend(wallet, "1000")
        wallets.append(wallet)
    results = run_together(4, lambda i: services.low_balance_sweep())
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(r.alerted for r in results) == 10
    assert sorted(Alert.objects.values_list("wallet_id", flat=True)) == sorted(
        w.pk for w in wallets
    )
    # Deliveries ran after each sweep's commits (eager tasks in the test settings).
    assert len(mail.outbox) == 10
    assert_ledger_ok(*wallets)
