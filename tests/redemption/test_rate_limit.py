"""Failed redemption attempts are limited per user and per client address, in the shared
cache (Redis in the test suite), so codes cannot be guessed at speed."""

from __future__ import annotations

import pytest

from config.errors import RateLimited
from redemption.errors import CodeNotFound
from redemption.models import Redemption
from tests.factories import UserFactory
from tests.helpers import ledger_state, micro
from tests.redemption.conftest import make_batch, redeem
from tests.wallet.test_concurrency import run_together
from wallet.models import Wallet

BAD = "ZZZZ-ZZZZ-ZZZZ-ZZZZ"


@pytest.fixture
def limit(settings) -> int:
    settings.REDEMPTION_FAILURE_LIMIT = 3
    settings.REDEMPTION_FAILURE_WINDOW_SECONDS = 3600
    return 3


def fail(user, **kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CodeNotFound):
        redeem(user, BAD, **kwargs)


@pytest.mark.django_db
def test_a_user_is_limited_after_too_many_failures_even_with_a_good_code(user, limit) -> None:
    [good] = make_batch().codes
    for _ in range(limit):
        fail(user)
    before = ledger_state(Wallet.objects.get(user=user))
    with pytest.raises(RateLimited) as limited:
        redeem(user, good)
    assert limited.value.code == "rate_limited"
    assert 1 <= limited.value.detail["retry_after"] <= 3600
    assert ledger_state(Wallet.objects.get(user=user)) == before
    assert not Redemption.objects.exists()
    # Other users are not affected.
    assert redeem(UserFactory(), good).redemption


@pytest.mark.django_db
def test_the_user_limit_holds_across_addresses(user, limit) -> None:
    for i in range(limit):
        fail(user, ip_address=f"10.0.0.{i}")
    with pytest.raises(RateLimited):
        redeem(user, BAD, ip_address="10.9.9.9")


@pytest.mark.django_db
def test_an_address_is_limited_across_users(limit) -> None:
    [good] = make_batch(uses_per_code=5).codes
    for _ in range(limit):
        fail(UserFactory(), ip_address="192.0.2.7")
    fresh = UserFactory()
    with pytest.raises(RateLimited):
        redeem(fresh, good, ip_address="192.0.2.7")
    assert not Redemption.objects.exists()
    assert redeem(fresh, good, ip_address="192.0.2.8").redemption


@pytest.mark.django_db
def test_successful_redemptions_do_not_count(user, limit) -> None:
    fail(user, ip_address="192.0.2.1")
    fail(user, ip_address="192.0.2.1")
    for _ in range(5):
        [code] = make_batch().codes
        redeem(user, code, ip_address="192.0.2.1")
    assert Wallet.objects.get(user=user).balance == micro("25")
    fail(user, ip_address="192.0.2.1")  # the third failure is still allowed
    with pytest.raises(RateLimited):
        redeem(user, BAD, ip_address="192.0.2.1")


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_burst_of_parallel_guesses_cannot_pass_the_limit(limit) -> None:
    user = UserFactory()
    results = run_together(12, lambda i: redeem(user, BAD, ip_address="198.51.100.1"))
    not_found = [r for r in results if isinstance(r, CodeNotFound)]
    limited = [r for r in results if isinstance(r, RateLimited)]
    # Never more than the limit get through (counted before they run; racing counters can
    # only make the limit stricter for one burst, never looser: with the user's and the
    # address's counters raced in different orders, a loaded machine may even refuse all).
    assert len(not_found) <= limit, results
    assert len(not_found) + len(limited) == 12, results
    while True:  # then the rest of the window's allowance, one at a time
        try:
            redeem(user, BAD, ip_address="198.51.100.1")
        except CodeNotFound as exc:
            not_found.append(exc)
        except RateLimited:
            break
    assert len(not_found) == limit


@pytest.mark.django_db
def test_refused_attempts_do_not_use_up_a_shared_address(user, limit) -> None:
    for _ in range(limit):
        fail(user, ip_address="192.0.2.1")
    for _ in range(10):  # the blocked user keeps trying from an office network
        with pytest.raises(RateLimited):
            redeem(user, BAD, ip_address="198.51.100.20")
    colleague = UserFactory()
    [code] = make_batch().codes
    assert redeem(colleague, code, ip_address="198.51.100.20").redemption
