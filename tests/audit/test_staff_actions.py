"""Staff actions: each permission boundary, the support limit (in the service, not only the
form), idempotent replays, a clean ledger and an audit record for every action."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiToken
from audit import services
from audit.errors import AdjustmentOverLimit, ChargeAlreadyCorrected, StaffActionNotAllowed
from audit.models import AuditRecord
from tests.audit.conftest import charge, staff_member
from tests.helpers import ledger_state, micro, refresh
from tests.usage.conftest import org_member  # noqa: F401 (a fixture)
from usage.models import UsageRecord
from wallet.errors import BalanceWouldGoNegative, InsufficientCredits, ReasonRequired
from wallet.models import CreditLot, LedgerEntry

pytestmark = pytest.mark.django_db


def test_support_adjusts_within_the_limit_with_an_audit_record(support, customer_wallet) -> None:
    entry = services.staff_wallet_adjust(
        actor=support,
        wallet=customer_wallet,
        amount_micro=micro("25"),
        reason="Goodwill after outage #12",
        idempotency_key="adj-1",
    )
    assert entry.kind == LedgerEntry.Kind.ADJUSTMENT and entry.actor == support
    assert refresh(customer_wallet).balance == micro("75")
    record = AuditRecord.objects.get()
    assert (record.actor, record.action, record.reason) == (
        support,
        "wallet.adjust",
        "Goodwill after outage #12",
    )
    assert record.target_type == "wallet.wallet" and record.target_id == str(customer_wallet.pk)
    assert record.before["balance"] == micro("50") and record.after["balance"] == micro("75")
    assert record.after["entry_id"] == entry.pk


def test_support_cannot_adjust_above_the_limit_and_nothing_changes(
    support, customer_wallet, settings
) -> None:
    settings.SUPPORT_ADJUST_LIMIT_CREDITS = 100
    before = ledger_state(customer_wallet)
    for amount in (micro("100.000001"), -micro("100.5")):
        with pytest.raises(AdjustmentOverLimit):
            services.staff_wallet_adjust(
                actor=support,
                wallet=customer_wallet,
                amount_micro=amount,
                reason="big one",
                idempotency_key=f"adj-{amount}",
            )
    with pytest.raises(AdjustmentOverLimit):
        services.staff_promotional_grant(
            actor=support,
            wallet=customer_wallet,
            amount_micro=micro("101"),
            reason="promo",
            idempotency_key="promo-big",
            expires_at=None,
        )
    assert ledger_state(customer_wallet) == before
    assert not AuditRecord.objects.exists()
    # Exactly at the limit is allowed.
    services.staff_wallet_adjust(
        actor=support,
        wallet=customer_wallet,
        amount_micro=micro("100"),
        reason="at the limit",
        idempotency_key="adj-at",
    )
    assert refresh(customer_wallet).balance == micro("150")


def test_finance_adjusts_above_the_limit(finance, customer_wallet, settings) -> None:
    settings.SUPPORT_ADJUST_LIMIT_CREDITS = 100
    services.staff_wallet_adjust(
        actor=finance,
        wallet=customer_wallet,
        amount_micro=micro("5000"),
        category=CreditLot.Category.PAID,
        reason="Wire received outside Stripe",
        idempotency_key="adj-fin",
    )
    assert refresh(customer_wallet).balance == micro("5050")
    assert CreditLot.objects.filter(wallet=customer_wallet, category="paid").count() == 2


def test_a_customer_or_plain_staff_cannot_adjust(user, staff, customer_wallet) -> None:
    for actor in (user, staff):
        with pytest.raises(StaffActionNotAllowed):
            services.staff_wallet_adjust(
                actor=actor,
                wallet=customer_wallet,
                amount_micro=micro("1"),
                reason="x",
                idempotency_key=f"nope-{actor.pk}",
            )
    assert refresh(customer_wallet).balance == micro("50")


def test_an_adjustment_down_never_goes_below_zero(support, customer_wallet) -> None:
    before = ledger_state(customer_wallet)
    with pytest.raises(BalanceWouldGoNegative):
        services.staff_wallet_adjust(
            actor=support,
            wallet=customer_wallet,
            amount_micro=-micro("50.000001"),
            reason="too much",
            idempotency_key="down-1",
        )
    assert ledger_state(customer_wallet) == before and not AuditRecord.objects.exists()
    services.staff_wallet_adjust(
        actor=support,
        wallet=customer_wallet,
        amount_micro=-micro("50"),
        reason="chargeback",
        idempotency_key="down-2",
    )
    assert refresh(customer_wallet).balance == 0


def test_a_reason_is_mandatory(support, customer_wallet) -> None:
    with pytest.raises(ReasonRequired):
        services.staff_wallet_adjust(
            actor=support,
            wallet=customer_wallet,
            amount_micro=micro("1"),
            reason="  ",
            idempotency_key="r-1",
        )
    assert not AuditRecord.objects.exists()


def test_a_replayed_adjustment_moves_credits_once_and_is_recorded_once(
    support, customer_wallet
) -> None:
    for _ in range(2):
        entry = services.staff_wallet_adjust(
            actor=support,
            wallet=customer_wallet,
            amount_micro=micro("10"),
            reason="twice submitted",
            idempotency_key="same",
        )
    assert refresh(customer_wallet).balance == micro("60")
    assert AuditRecord.objects.count() == 1
    assert LedgerEntry.objects.filter(actor=support).get() == entry


def test_promotional_credits_with_an_expiry(support, customer_wallet) -> None:
    expires = timezone.now() + dt.timedelta(days=30)
    entry = services.staff_promotional_grant(
        actor=support,
        wallet=customer_wallet,
        amount_micro=micro("20"),
        reason="Conference voucher",
        idempotency_key="promo-1",
        expires_at=expires,
    )
    assert entry.kind == LedgerEntry.Kind.PROMO and entry.lot is not None
    assert entry.lot.category == "promotional" and entry.lot.expires_at == expires
    assert AuditRecord.objects.get().action == "wallet.promotional_grant"


def test_disable_and_revoke_tokens_are_audited(support, user, token) -> None:
    second = account_services.api_token_create(user=user, name="second", scopes=["read"])[0]
    assert services.staff_user_tokens_revoke(actor=support, user=user, reason="leaked") == 2
    assert set(ApiToken.objects.values_list("status", flat=True)) == {"revoked"}
    services.staff_user_disable(actor=support, user=user, reason="fraud")
    user.refresh_from_db()
    assert not user.is_active
    records = list(AuditRecord.objects.order_by("id"))
    assert [r.action for r in records] == ["user.tokens_revoke", "user.disable"]
    assert set(records[0].before["active_tokens"]) == {token.prefix, second.prefix}
    assert records[1].before == {"is_active": True} and records[1].after == {"is_active": False}


def test_revoking_and_disabling_need_their_permissions(staff, user) -> None:
    with pytest.raises(StaffActionNotAllowed):
        services.staff_user_disable(actor=staff, user=user, reason="x")
    with pytest.raises(StaffActionNotAllowed):
        services.staff_user_tokens_revoke(actor=staff, user=user, reason="x")
    user.refresh_from_db()
    assert user.is_active


# --- Charge corrections ---------------------------------------------------------------------


def test_a_correction_reverses_the_charge_and_charges_the_right_amount(
    support, token, customer_wallet
) -> None:
    record = charge(token)  # 2.50 credits
    assert refresh(customer_wallet).balance == micro("47.5")
    entries = services.staff_usage_charge_correct(
        actor=support,
        record=record,
        new_charge_micro=micro("1"),
        reason="Upstream double-counted tokens",
        idempotency_key="fix-1",
    )
    original = LedgerEntry.objects.get(kind="usage", actor__isnull=True)
    reversal, new = entries
    assert (reversal.kind, reversal.amount, reversal.corrects) == (
        "reversal",
        micro("2.5"),
        original,
    )
    assert (new.kind, new.amount, new.corrects) == ("usage", -micro("1"), original)
    assert reversal.reference_id == new.reference_id == str(record.pk)
    assert refresh(customer_wallet).balance == micro("49")
    assert services.usage_record_charged_net(record=record) == micro("1")
    token.refresh_from_db()
    assert token.used_micro == micro("1")
    audit = AuditRecord.objects.get()
    assert audit.action == "usage.charge_correct"
    assert audit.before["charged"] == micro("2.5") and audit.after["charged"] == micro("1")


def test_a_correction_moves_a_pool_members_monthly_spend_in_the_requests_month(
    support,
    org_member,  # noqa: F811
    prices,
) -> None:
    from accounts.models import Membership
    from tests.usage.conftest import make_token
    from wallet.models import Wallet

    member, organization = org_member
    token = make_token(member, organization=organization)[0]
    record = charge(token)  # 2.50 credits from the pool
    membership = Membership.objects.get(organization=organization, user=member)
    assert membership.spend_month_micro == micro("2.5")
    services.staff_usage_charge_correct(
        actor=support,
        record=record,
        new_charge_micro=micro("1"),
        reason="Upstream double-counted tokens",
        idempotency_key="fix-pool",
    )
    membership.refresh_from_db()
    assert membership.spend_month_micro == micro("1")
    assert refresh(Wallet.objects.get(organization=organization)).balance == micro("99")
    # A record from a month the member's count has left changes nothing in the new month.
    later = charge(token)
    Membership.objects.filter(pk=membership.pk).update(
        spend_month=(timezone.now() + dt.timedelta(days=40)).date().replace(day=1),
        spend_month_micro=micro("7"),
    )
    services.staff_usage_charge_correct(
        actor=support, record=later, new_charge_micro=None, reason="refund", idempotency_key="x"
    )
    membership.refresh_from_db()
    assert membership.spend_month_micro == micro("7")


def test_a_correction_without_a_new_charge_gives_everything_back(support, token, customer_wallet):
    record = charge(token)
    services.staff_usage_charge_correct(
        actor=support, record=record, new_charge_micro=None, reason="failed", idempotency_key="k"
    )
    assert refresh(customer_wallet).balance == micro("50")


def test_a_record_is_corrected_once_and_a_replay_changes_nothing(support, token, customer_wallet):
    record = charge(token)
    first = services.staff_usage_charge_correct(
        actor=support, record=record, new_charge_micro=0, reason="r", idempotency_key="k1"
    )
    again = services.staff_usage_charge_correct(
        actor=support, record=record, new_charge_micro=0, reason="r", idempotency_key="k1"
    )
    assert [e.pk for e in again] == [e.pk for e in first]
    with pytest.raises(ChargeAlreadyCorrected):
        services.staff_usage_charge_correct(
            actor=support, record=record, new_charge_micro=0, reason="r", idempotency_key="k2"
        )
    assert refresh(customer_wallet).balance == micro("50")
    assert AuditRecord.objects.count() == 1


def test_a_correction_that_cannot_be_paid_changes_nothing(finance, token, customer_wallet):
    record = charge(token)
    before = ledger_state(customer_wallet)
    with pytest.raises(InsufficientCredits):
        services.staff_usage_charge_correct(
            actor=finance,
            record=record,
            new_charge_micro=micro("60"),
            reason="under-priced",
            idempotency_key="k",
        )
    assert ledger_state(customer_wallet) == before
    assert not AuditRecord.objects.exists()


def test_support_corrections_are_bound_by_the_limit(support, token, settings):
    settings.SUPPORT_ADJUST_LIMIT_CREDITS = 2
    record = charge(token)  # 2.50 credits
    with pytest.raises(AdjustmentOverLimit):
        services.staff_usage_charge_correct(
            actor=support, record=record, new_charge_micro=0, reason="r", idempotency_key="k"
        )
    finance = staff_member("Finance")
    services.staff_usage_charge_correct(
        actor=finance, record=record, new_charge_micro=0, reason="r", idempotency_key="k"
    )
    assert UsageRecord.objects.get().charged_micro == micro("2.5")  # the record keeps history


def test_seed_demo_creates_a_member_of_each_staff_group() -> None:
    from django.core.management import call_command

    from accounts.models import User

    call_command("seed_demo", "--quiet")
    call_command("seed_demo", "--quiet")
    support = User.objects.get(email="support@example.com")
    finance = User.objects.get(email="finance@example.com")
    assert support.has_perm("audit.adjust_balance")
    assert not support.has_perm("billing.refund_topuporder")
    assert finance.has_perm("billing.refund_topuporder")


def test_a_key_belongs_to_one_action(support, customer_wallet) -> None:
    services.staff_wallet_adjust(
        actor=support,
        wallet=customer_wallet,
        amount_micro=micro("1"),
        reason="r",
        idempotency_key="shared",
    )
    entry = services.staff_promotional_grant(
        actor=support,
        wallet=customer_wallet,
        amount_micro=micro("2"),
        reason="r",
        idempotency_key="shared",
        expires_at=None,
    )
    assert entry.kind == LedgerEntry.Kind.PROMO
    assert refresh(customer_wallet).balance == micro("53")
    assert AuditRecord.objects.count() == 2
