"""Redeeming: credits as a redemption lot, every refusal with nothing changed, eligibility
rules one by one, idempotency."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import User
from billing import services as billing_services
from billing.models import TopUpOrder
from config.errors import IdempotencyConflict
from redemption import services
from redemption.errors import (
    AlreadyRedeemed,
    CodeDisabled,
    CodeExhausted,
    CodeExpired,
    CodeNotFound,
    NotEligible,
    RedemptionError,
)
from redemption.models import Redemption, RedemptionCode
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, ledger_state, micro
from tests.redemption.conftest import make_batch, redeem
from wallet.models import CreditLot, LedgerEntry, Wallet

pytestmark = pytest.mark.django_db


def wallet_of(user: User) -> Wallet:
    return Wallet.objects.get(user=user)


def test_a_code_grants_a_redemption_lot_with_the_batch_expiry(user) -> None:
    generated = make_batch(credits_micro=micro("7.5"), credit_validity_days=30)
    before = timezone.now()
    result = redeem(user, generated.codes[0].lower().replace("-", " "), ip_address="10.0.0.1")
    redemption = result.redemption
    assert not result.replayed
    wallet = wallet_of(user)
    assert wallet.balance == micro("7.5")
    lot = CreditLot.objects.get(wallet=wallet)
    assert (lot.category, lot.amount, lot.remaining) == ("redemption", micro("7.5"), micro("7.5"))
    assert lot.expires_at is not None
    assert before + dt.timedelta(days=30) <= lot.expires_at <= timezone.now() + dt.timedelta(30)
    entry = LedgerEntry.objects.get(wallet=wallet)
    assert (entry.kind, entry.amount, entry.lot_id) == ("redemption", micro("7.5"), lot.pk)
    assert entry.reference_type == "redemption.redemptioncode"
    assert entry.idempotency_key == f"redemption:{generated.batch.pk}:{user.pk}:1"
    assert (redemption.ledger_entry, redemption.lot, redemption.expires_at) == (
        entry,
        lot,
        lot.expires_at,
    )
    assert redemption.ip_address == "10.0.0.1"
    assert RedemptionCode.objects.get().uses == 1
    assert_ledger_ok(wallet)


def test_credits_expire_at_the_earlier_of_the_days_and_the_fixed_date(user, other_user) -> None:
    soon = timezone.now() + dt.timedelta(days=3)
    generated = make_batch(code_count=2, credit_validity_days=30, credits_expire_at=soon)
    assert redeem(user, generated.codes[0]).redemption.lot.expires_at == soon
    never = make_batch(code_count=1).codes[0]
    assert redeem(other_user, never).redemption.lot.expires_at is None


def test_a_shared_code_serves_many_accounts_up_to_its_uses(user, other_user) -> None:
    [code] = make_batch(uses_per_code=2).codes
    redeem(user, code)
    redeem(other_user, code)
    assert RedemptionCode.objects.get().uses == 2
    with pytest.raises(CodeExhausted):
        redeem(UserFactory(), code)


# --- Every refusal, with nothing changed ----------------------------------------------------


def _not_found(user: User) -> tuple[str, dict[str, Any]]:
    make_batch()
    return "ZZZZ-ZZZZ-ZZZZ-ZZZZ", {}


def _garbage(user: User) -> tuple[str, dict[str, Any]]:
    return "hello there", {}


def _expired(user: User) -> tuple[str, dict[str, Any]]:
    expiry = timezone.now() + dt.timedelta(hours=1)
    [code] = make_batch(codes_expire_at=expiry).codes
    return code, {"now": expiry + dt.timedelta(seconds=1)}


def _credits_past_expiry(user: User) -> tuple[str, dict[str, Any]]:
    expiry = timezone.now() + dt.timedelta(hours=1)
    [code] = make_batch(credits_expire_at=expiry).codes
    return code, {"now": expiry}


def _batch_disabled(user: User) -> tuple[str, dict[str, Any]]:
    generated = make_batch()
    services.batch_set_status(batch=generated.batch, status="disabled")
    return generated.codes[0], {}


def _code_disabled(user: User) -> tuple[str, dict[str, Any]]:
    generated = make_batch(code_count=2)
    services.code_set_status(code=services.code_find(text=generated.codes[0]), status="disabled")
    return generated.codes[0], {}


def _exhausted(user: User) -> tuple[str, dict[str, Any]]:
    [code] = make_batch().codes
    redeem(UserFactory(), code)
    return code, {}


def _already(user: User) -> tuple[str, dict[str, Any]]:
    [code] = make_batch(uses_per_code=5).codes
    redeem(user, code)
    return code, {}


def _other_code_same_batch(user: User) -> tuple[str, dict[str, Any]]:
    first, second = make_batch(code_count=2).codes
    redeem(user, first)
    return second, {}


def _not_eligible(user: User) -> tuple[str, dict[str, Any]]:
    [code] = make_batch(allowed_countries="DE").codes
    return code, {}


@pytest.mark.parametrize(
    ("scenario", "error", "code"),
    [
        (_not_found, CodeNotFound, "code_not_found"),
        (_garbage, CodeNotFound, "code_not_found"),
        (_expired, CodeExpired, "code_expired"),
        (_credits_past_expiry, CodeExpired, "code_expired"),
        (_batch_disabled, CodeDisabled, "code_disabled"),
        (_code_disabled, CodeDisabled, "code_disabled"),
        (_exhausted, CodeExhausted, "code_exhausted"),
        (_already, AlreadyRedeemed, "already_redeemed"),
        (_other_code_same_batch, AlreadyRedeemed, "already_redeemed"),
        (_not_eligible, NotEligible, "not_eligible"),
    ],
)
def test_each_refusal_has_its_code_and_changes_nothing(
    user, scenario: Callable[[User], tuple[str, dict[str, Any]]], error, code: str
) -> None:
    typed, kwargs = scenario(user)
    wallet = wallet_of(user)
    before = ledger_state(wallet)
    uses = list(RedemptionCode.objects.order_by("id").values_list("id", "uses"))
    redemptions = Redemption.objects.count()
    with pytest.raises(error) as refused:
        redeem(user, typed, **kwargs)
    assert refused.value.code == code
    assert isinstance(refused.value, RedemptionError)
    assert ledger_state(wallet) == before
    assert list(RedemptionCode.objects.order_by("id").values_list("id", "uses")) == uses
    assert Redemption.objects.count() == redemptions
    assert_ledger_ok()


def test_a_code_you_redeemed_is_already_redeemed_even_when_it_is_used_up(user) -> None:
    [code] = make_batch().codes  # one use, taken by this user
    redeem(user, code)
    with pytest.raises(AlreadyRedeemed, match="already redeemed this code"):
        redeem(user, code)


def test_uses_per_account_counts_codes_across_the_batch(user) -> None:
    a, b, c = make_batch(code_count=3, uses_per_account=2).codes
    redeem(user, a)
    redeem(user, b)
    with pytest.raises(AlreadyRedeemed, match="2 codes from this offer"):
        redeem(user, c)
    assert list(Redemption.objects.order_by("sequence").values_list("sequence", flat=True)) == [
        1,
        2,
    ]
    assert wallet_of(user).balance == micro("10")


def test_a_shared_code_may_be_used_twice_by_one_account_when_allowed(user) -> None:
    [code] = make_batch(uses_per_code=10, uses_per_account=2).codes
    redeem(user, code)
    redeem(user, code)
    with pytest.raises(AlreadyRedeemed):
        redeem(user, code)
    assert RedemptionCode.objects.get().uses == 2


# --- Eligibility, one rule at a time ------------------------------------------------------------


def _aged(days: float, **kwargs: Any) -> User:
    user = UserFactory(**kwargs)
    User.objects.filter(pk=user.pk).update(date_joined=timezone.now() - dt.timedelta(days=days))
    return User.objects.get(pk=user.pk)


def _refused_rule(user: User, code: str) -> tuple[str, str]:
    before = ledger_state(wallet_of(user))
    with pytest.raises(NotEligible) as refused:
        redeem(user, code)
    assert ledger_state(wallet_of(user)) == before
    return refused.value.detail["rule"], refused.value.message


def test_new_accounts_only() -> None:
    generated = make_batch(code_count=2, new_accounts_within_days=7, uses_per_code=1)
    rule, message = _refused_rule(_aged(8), generated.codes[0])
    assert rule == "new_accounts_only"
    assert "created in the last 7 days" in message
    assert redeem(_aged(6.9), generated.codes[0]).redemption


def test_minimum_account_age() -> None:
    [code] = make_batch(min_account_age_days=30, uses_per_code=2).codes
    rule, message = _refused_rule(_aged(29), code)
    assert rule == "minimum_account_age"
    assert "at least 30 days old" in message
    assert redeem(_aged(31), code).redemption


def test_allowed_countries() -> None:
    [code] = make_batch(allowed_countries="DE,FR", uses_per_code=3).codes
    rule, message = _refused_rule(UserFactory(country="US"), code)
    assert rule == "country"
    assert "DE, FR" in message and "yours is US" in message
    rule, message = _refused_rule(UserFactory(country=""), code)
    assert "not set" in message
    assert redeem(UserFactory(country="FR"), code).redemption


def test_accounts_without_a_completed_topup(user, other_user, superuser) -> None:
    [code] = make_batch(require_no_prior_topup=True, uses_per_code=2).codes
    bank = TopUpOrder.PaymentMethod.BANK_TRANSFER
    paid = billing_services.topup_order_create(user=user, amount="10", payment_method=bank)
    billing_services.order_confirm_manual_payment(order=paid, actor=superuser)
    billing_services.topup_order_create(user=other_user, amount="10", payment_method=bank)
    rule, message = _refused_rule(user, code)
    assert rule == "no_prior_topup"
    assert "not topped up" in message
    # A top-up still waiting for its payment is not a top-up.
    assert redeem(other_user, code).redemption


def test_an_explicit_list_of_accounts(user, other_user) -> None:
    [code] = make_batch(allowed_users=[other_user], uses_per_code=2).codes
    rule, message = _refused_rule(user, code)
    assert rule == "listed_accounts"
    assert "reserved for specific accounts" in message
    assert redeem(other_user, code).redemption


def test_all_rules_together_report_the_first_that_fails() -> None:
    [code] = make_batch(
        new_accounts_within_days=30, min_account_age_days=2, allowed_countries="US"
    ).codes
    assert _refused_rule(_aged(1, country="US"), code)[0] == "minimum_account_age"
    assert _refused_rule(_aged(3, country="DE"), code)[0] == "country"
    assert redeem(_aged(3, country="US"), code).redemption


# --- Idempotency ------------------------------------------------------------------------------


def test_a_retry_with_the_same_key_returns_the_first_redemption(user) -> None:
    [code] = make_batch(uses_per_code=3).codes
    first = redeem(user, code, client_key="k1")
    again = redeem(user, code.lower(), client_key="k1")
    assert again.replayed and again.redemption.pk == first.redemption.pk
    assert wallet_of(user).balance == micro("5")
    assert RedemptionCode.objects.get().uses == 1
    other = make_batch().codes[0]
    before = ledger_state(wallet_of(user))
    with pytest.raises(IdempotencyConflict):
        redeem(user, other, client_key="k1")
    assert ledger_state(wallet_of(user)) == before
    assert_ledger_ok()


def test_a_closed_wallet_refuses_and_is_not_counted_as_a_guess(user, settings) -> None:
    from wallet import services as wallet_services
    from wallet.errors import WalletClosed

    settings.REDEMPTION_FAILURE_LIMIT = 1
    [code] = make_batch().codes
    wallet_services.wallet_set_status(wallet=wallet_of(user), status="closed")
    for _ in range(3):
        with pytest.raises(WalletClosed):
            redeem(user, code)
    assert RedemptionCode.objects.get().uses == 0
    assert not Redemption.objects.exists()
