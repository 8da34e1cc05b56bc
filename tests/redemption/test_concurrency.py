"""Real threads, real transactions: a code is never redeemed more often than it allows."""

from __future__ import annotations

import pytest

from redemption.errors import AlreadyRedeemed, CodeExhausted
from redemption.models import Redemption, RedemptionCode
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, micro
from tests.redemption.conftest import make_batch, redeem
from tests.wallet.test_concurrency import run_together
from wallet.models import LedgerEntry, Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
def _no_rate_limit(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDEMPTION_FAILURE_LIMIT = 10_000


def test_fifty_users_racing_for_a_code_with_seven_uses_get_exactly_seven() -> None:
    [code] = make_batch(uses_per_code=7).codes
    users = [UserFactory() for _ in range(50)]
    results = run_together(50, lambda i: redeem(users[i], code))
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, CodeExhausted)]
    assert (len(won), len(lost)) == (7, 43), [r for r in results if isinstance(r, Exception)][:3]
    assert RedemptionCode.objects.get().uses == 7
    assert Redemption.objects.count() == 7
    assert LedgerEntry.objects.filter(kind="redemption").count() == 7
    winners = {r.redemption.user_id for r in won}
    for user in users:
        expected = micro("5") if user.pk in winners else 0
        assert Wallet.objects.get(user=user).balance == expected
    assert_ledger_ok()


def test_one_user_redeeming_one_code_from_ten_threads_gets_it_once() -> None:
    [code] = make_batch(uses_per_code=10).codes
    user = UserFactory()
    results = run_together(10, lambda i: redeem(user, code))
    won = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, AlreadyRedeemed)]
    assert (len(won), len(refused)) == (1, 9), results
    assert Wallet.objects.get(user=user).balance == micro("5")
    assert RedemptionCode.objects.get().uses == 1
    assert_ledger_ok()


def test_one_user_racing_ten_codes_of_a_once_per_account_batch_gets_one() -> None:
    generated = make_batch(code_count=10, uses_per_account=1)
    user = UserFactory()
    results = run_together(10, lambda i: redeem(user, generated.codes[i]))
    won = [r for r in results if not isinstance(r, Exception)]
    assert len(won) == 1, results
    assert all(isinstance(r, AlreadyRedeemed) for r in results if isinstance(r, Exception))
    assert Wallet.objects.get(user=user).balance == micro("5")
    assert sum(RedemptionCode.objects.values_list("uses", flat=True)) == 1
    assert_ledger_ok()


def test_ten_retries_with_one_key_give_one_redemption() -> None:
    [code] = make_batch(uses_per_code=10).codes
    user = UserFactory()
    results = run_together(10, lambda i: redeem(user, code, client_key="retry-key"))
    assert all(not isinstance(r, Exception) for r in results), results
    assert len({r.redemption.pk for r in results}) == 1
    assert sum(1 for r in results if not r.replayed) == 1
    assert Wallet.objects.get(user=user).balance == micro("5")
    assert_ledger_ok()
