"""The staff console in the admin: pages for both groups, actions through their forms, the
permission boundaries, the read-only audit trail and the margin report."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from audit.models import AuditRecord
from billing import services as billing_services
from billing.models import Refund, TopUpOrder
from tests.audit.conftest import charge, logged_in, staff_member
from tests.factories import UserFactory
from tests.helpers import micro, refresh
from usage.models import UsageRecord
from wallet.models import Wallet

pytestmark = pytest.mark.django_db

PAGES = (
    "/admin/",
    "/admin/accounts/user/",
    "/admin/accounts/apitoken/",
    "/admin/accounts/tokengroup/",
    "/admin/accounts/billingtier/",
    "/admin/accounts/organization/",
    "/admin/wallet/wallet/",
    "/admin/wallet/creditlot/",
    "/admin/wallet/ledgerentry/",
    "/admin/wallet/hold/",
    "/admin/usage/usagerecord/",
    "/admin/usage/modelprice/",
    "/admin/billing/topuporder/",
    "/admin/billing/webhookevent/",
    "/admin/billing/recurringgrant/",
    "/admin/redemption/redemptionbatch/",
    "/admin/referrals/rewardrule/",
    "/admin/audit/auditrecord/",
    "/admin/alerts/alert/",
)


def _paid_order(user, amount: str = "100") -> TopUpOrder:
    confirmer = staff_member("Finance")
    order = billing_services.topup_order_create(
        user=user, amount=amount, payment_method="bank_transfer"
    )
    return billing_services.order_confirm_manual_payment(order=order, actor=confirmer)


@pytest.mark.parametrize("group", ["Support", "Finance"])
def test_admin_pages_render_for_both_groups(group, user, token) -> None:
    record = charge(token)
    client = logged_in(staff_member(group))
    for url in (*PAGES, f"/admin/accounts/user/{user.pk}/change/"):
        response = client.get(url)
        assert response.status_code == 200, (group, url)
    page = client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()
    assert "Recent ledger" in page and "47.50" in page  # balance after the charge
    assert client.get(f"/admin/usage/usagerecord/{record.pk}/change/").status_code == 200
    margin = client.get("/admin/audit/marginreport/")
    assert margin.status_code == (200 if group == "Finance" else 403)


def test_ledger_lots_holds_usage_and_audit_are_read_only_even_for_superusers(user, token) -> None:
    charge(token)
    admin_client = logged_in(UserFactory(is_staff=True, is_superuser=True))
    for model in ("wallet/ledgerentry", "wallet/creditlot", "wallet/hold", "usage/usagerecord"):
        assert admin_client.get(f"/admin/{model}/add/").status_code == 403, model
    AuditRecord.objects.create(action="x", target_type="t")
    record = AuditRecord.objects.get()
    assert admin_client.get("/admin/audit/auditrecord/add/").status_code == 403
    response = admin_client.post(
        f"/admin/audit/auditrecord/{record.pk}/change/", {"reason": "edited"}
    )
    assert response.status_code == 403
    response = admin_client.post(f"/admin/audit/auditrecord/{record.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    with pytest.raises(RuntimeError):
        record.save()
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditrecord SET reason = 'edited'")
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditrecord")
    assert AuditRecord.objects.get().reason == ""


def _post_action(client, url: str, action: str, ids, **fields):  # type: ignore[no-untyped-def]
    shown = client.post(url, {"action": action, "_selected_action": ids})
    assert shown.status_code == 200, shown.content[:500]
    key = shown.context["form"]["idempotency_key"].value()
    data = {"action": action, "_selected_action": ids, "apply": "1", "idempotency_key": key}
    data.update(fields)
    return client.post(url, data, follow=True)


def test_support_adjusts_a_balance_from_the_user_list(support_client, user, customer_wallet):
    response = _post_action(
        support_client,
        "/admin/accounts/user/",
        "adjust_balance",
        [user.pk],
        amount="12.5",
        category="adjustment",
        reason="Refund of failed calls",
    )
    assert "adjusted by 12.50 credits" in response.content.decode()
    assert refresh(customer_wallet).balance == micro("62.5")
    assert AuditRecord.objects.get().action == "wallet.adjust"


def test_the_support_limit_holds_in_the_admin_too(support_client, user, customer_wallet, settings):
    settings.SUPPORT_ADJUST_LIMIT_CREDITS = 10
    response = _post_action(
        support_client,
        "/admin/accounts/user/",
        "adjust_balance",
        [user.pk],
        amount="10.01",
        category="adjustment",
        reason="too much",
    )
    assert "above the support adjustment limit" in response.content.decode()
    assert refresh(customer_wallet).balance == micro("50")
    assert not AuditRecord.objects.exists()


def test_support_cannot_refund(support, support_client, user) -> None:
    order = _paid_order(user)
    actions = support_client.get("/admin/billing/topuporder/").context["action_form"]
    names = [name for name, _ in actions.fields["action"].choices]
    assert "refund_amount" not in names and "refund_unused" not in names
    assert "sync_with_provider" in names
    # Posting the action anyway does nothing.
    support_client.post(
        "/admin/billing/topuporder/",
        {"action": "refund_amount", "_selected_action": [order.pk], "apply": "1", "reason": "x"},
    )
    with pytest.raises(billing_services.TopUpNotAllowed):
        billing_services.refund_create(
            order=order, amount_minor=None, idempotency_key="s", actor=support
        )
    assert not Refund.objects.exists()
    assert refresh(Wallet.objects.get(user=user)).balance == order.total_micro


def test_finance_refunds_part_of_an_order(finance_client, user) -> None:
    order = _paid_order(user)
    response = _post_action(
        finance_client,
        "/admin/billing/topuporder/",
        "refund_amount",
        [order.pk],
        amount="40.00",
        reason="Customer asked",
    )
    assert "refund succeeded" in response.content.decode()
    refund = Refund.objects.get()
    assert refund.amount_minor == 4000 and refund.reason == "Customer asked"
    assert TopUpOrder.objects.get(pk=order.pk).status == "partially_refunded"
    record = AuditRecord.objects.get(action="billing.refund")
    assert record.after["refund_id"] == refund.pk


def test_support_corrects_a_charge_from_the_usage_records(support_client, token, customer_wallet):
    record = charge(token)
    response = _post_action(
        support_client,
        "/admin/usage/usagerecord/",
        "correct_charge",
        [record.pk],
        new_charge="0.5",
        reason="Billing bug #7",
    )
    assert "now charged 0.50 credits" in response.content.decode()
    assert refresh(customer_wallet).balance == micro("49.5")
    page = support_client.get(f"/admin/usage/usagerecord/{record.pk}/change/").content.decode()
    assert "Billing bug #7" in page and "Charged after corrections: 0.50 credits" in page


def test_other_admin_actions_leave_audit_records(support_client, token) -> None:
    response = support_client.post(
        "/admin/accounts/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}
    )
    assert response.status_code == 302
    record = AuditRecord.objects.get()
    assert record.action == "admin.action.revoke" and record.target_id == str(token.pk)
    assert record.before["status"] == "active" and record.after["status"] == "revoked"


def test_a_change_in_the_admin_is_audited_with_before_and_after(finance_client) -> None:
    from accounts import services as account_services

    tier = account_services.token_group_default().tier
    response = finance_client.post(
        f"/admin/accounts/billingtier/{tier.pk}/change/",
        {
            "name": "standard",
            "rate": "1.2",
            "description": "raised",
            "created_at_0": "2026-01-01",
            "created_at_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    record = AuditRecord.objects.get()
    assert record.action == "admin.change"
    assert Decimal(record.before["rate"]) == 1 and Decimal(record.after["rate"]) == Decimal("1.2")


def test_support_cannot_change_prices_or_tiers(support_client) -> None:
    assert support_client.get("/admin/usage/modelprice/add/").status_code == 403
    assert support_client.get("/admin/accounts/billingtier/add/").status_code == 403


def test_users_are_found_by_order_number_and_token_prefix(support_client, user, token) -> None:
    other = UserFactory()
    order = _paid_order(user, "20")
    for term in (order.order_no, token.prefix, f"sk-live-{token.prefix}-whatever"):
        page = support_client.get("/admin/accounts/user/", {"q": term}).content.decode()
        assert user.email in page and other.email not in page, term


def test_the_margin_report_and_its_csv(finance_client, token, support) -> None:
    first = charge(token)  # $2.50 at cost, 2.50 credits charged (markup 1, tier 1)
    charge(token, input_tokens=2_000_000)
    from audit import services

    services.staff_usage_charge_correct(
        actor=support, record=first, new_charge_micro=micro("3"), reason="r", idempotency_key="m"
    )
    page = finance_client.get("/admin/audit/marginreport/")
    assert page.status_code == 200
    (row,) = page.context["rows"]
    assert row.model == "test-chat" and row.requests == 2
    assert row.charged_usd == Decimal("8") and row.vendor_usd == Decimal("7.5")
    assert row.margin_usd == Decimal("0.5") and row.margin_percent == Decimal("6.25")
    response = finance_client.get("/admin/audit/marginreport/", {"format": "csv"})
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:3] == ["day", "model", "requests"]
    assert rows[1][1:3] == ["test-chat", "2"] and Decimal(rows[1][6]) == Decimal("0.5")
    assert UsageRecord.objects.count() == 2


def test_the_trail_never_keeps_password_hashes(user) -> None:
    admin_client = logged_in(UserFactory(is_staff=True, is_superuser=True))
    page = admin_client.get(f"/admin/accounts/user/{user.pk}/change/")
    form = page.context["adminform"].form
    data = {name: form[name].value() or "" for name in ("email", "full_name", "country")}
    data.update(
        {
            "is_active": "on",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
            "full_name": "Renamed",
        }
    )
    response = admin_client.post(f"/admin/accounts/user/{user.pk}/change/", data)
    assert response.status_code == 302, response.content[:3000]
    record = AuditRecord.objects.get(action="admin.change")
    assert record.after["full_name"] == "Renamed"
    assert "password" not in record.before and "password" not in record.after


def test_inline_changes_are_audited(organization) -> None:
    from accounts.models import Membership

    owner_membership = organization.memberships.get()
    member = UserFactory()
    extra = Membership.objects.create(organization=organization, user=member)
    memberships = [owner_membership, extra]
    data = {
        "name": organization.name,
        "slug": organization.slug,
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        "monthly_spend_limit_micro": str(micro("500")),
        "memberships-TOTAL_FORMS": "2",
        "memberships-INITIAL_FORMS": "2",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    for i, membership in enumerate(memberships):
        data.update(
            {
                f"memberships-{i}-id": str(membership.pk),
                f"memberships-{i}-organization": str(organization.pk),
                f"memberships-{i}-user": str(membership.user_id),
                f"memberships-{i}-role": membership.role,
                f"memberships-{i}-monthly_spend_limit_micro": "",
                f"memberships-{i}-spend_month_micro": "0",
                f"memberships-{i}-created_at_0": "2026-01-01",
                f"memberships-{i}-created_at_1": "00:00:00",
            }
        )
    data["memberships-0-monthly_spend_limit_micro"] = str(micro("100"))
    data["memberships-1-DELETE"] = "on"
    admin_client = logged_in(UserFactory(is_staff=True, is_superuser=True))
    response = admin_client.post(f"/admin/accounts/organization/{organization.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[-3000:]
    actions = {(r.action, r.target_type, r.target_id) for r in AuditRecord.objects.all()}
    assert actions == {
        ("admin.change", "accounts.organization", str(organization.pk)),
        ("admin.change", "accounts.membership", str(owner_membership.pk)),
        ("admin.delete", "accounts.membership", str(extra.pk)),
    }
    changed = AuditRecord.objects.get(target_type="accounts.membership", action="admin.change")
    assert changed.before["monthly_spend_limit_micro"] is None
    assert changed.after["monthly_spend_limit_micro"] == micro("100")
    deleted = AuditRecord.objects.get(action="admin.delete")
    assert deleted.before["user"] == member.pk
