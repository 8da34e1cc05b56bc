"""The support and finance console: the audit trail, the margin report, and the staff
actions on users, usage records and top-up orders.

The user, usage-record and top-up-order admins of their apps are extended here (and
re-registered) rather than edited in place, so the staff console lives in one module."""

from __future__ import annotations

import csv
import datetime as dt
from decimal import Decimal
from typing import Any, ClassVar

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts import admin as account_admin
from accounts.models import User
from audit import services
from audit.admin_mixins import StaffActionForm, staff_form_action
from audit.models import AuditRecord, MarginReport
from billing import admin as billing_admin
from billing import pricing
from billing import services as billing_services
from billing.models import Refund, TopUpOrder
from config.admin_mixins import ReadOnlyMixin
from usage import admin as usage_admin
from usage import selectors as usage_selectors
from usage.models import UsageRecord
from wallet import money
from wallet import selectors as wallet_selectors
from wallet.errors import WalletNotFound
from wallet.models import CreditLot, LedgerEntry


@admin.register(AuditRecord)
class AuditRecordAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Never editable, by anyone (superusers included): the trail is append-only."""

    list_display = ("created_at", "actor_label", "action", "target_type", "target_id", "reason")
    list_filter = ("action", "target_type")
    search_fields = ("actor_label", "target_id", "target_label", "reason", "action")
    date_hierarchy = "created_at"
    show_full_result_count = False
    readonly_fields = (
        "created_at",
        "actor",
        "actor_label",
        "action",
        "target_type",
        "target_id",
        "target_label",
        "reason",
        "before",
        "after",
        "idempotency_key",
    )


# --- Users: wallet summary and staff actions ------------------------------------------------


def _credits_field(**kwargs: Any) -> forms.DecimalField:
    return forms.DecimalField(max_digits=24, decimal_places=6, **kwargs)


class AdjustForm(StaffActionForm):
    amount = _credits_field(help_text="Credits; negative takes credits away.")
    category = forms.ChoiceField(
        choices=CreditLot.Category.choices,
        initial=CreditLot.Category.ADJUSTMENT,
        help_text="Category of the new lot (only for an increase).",
    )
    expires_at = forms.DateTimeField(required=False, help_text="Only for an increase.")
    field_order = ("amount", "category", "expires_at", "reason", "idempotency_key")


class PromotionalForm(StaffActionForm):
    amount = _credits_field(min_value=Decimal("0.000001"), help_text="Credits to grant.")
    expires_at = forms.DateTimeField(required=False, help_text="Empty: never expires.")
    field_order = ("amount", "expires_at", "reason", "idempotency_key")


class ReasonForm(StaffActionForm):
    pass


def _micro(value: Decimal) -> int:
    sign = -1 if value < 0 else 1
    return sign * money.credits_to_micro(abs(value))


def _wallet_of(user: User) -> Any:
    return wallet_selectors.wallet_get_for_user(user=user)


class SupportUserAdmin(account_admin.UserAdmin):
    """Search by email, name, top-up order number or API token prefix; the wallet at a
    glance; adjustments, promotional grants, disabling and token revocation."""

    search_fields: ClassVar[Any] = (
        "email",
        "full_name",
        "=topup_orders__order_no",
        "=api_tokens__prefix",
    )
    readonly_fields = ("wallet_summary",)
    fieldsets: ClassVar[Any] = (
        *account_admin.UserAdmin.fieldsets,
        ("Wallet", {"fields": ("wallet_summary",)}),
    )
    actions = ["adjust_balance", "grant_promotional", "disable_account", "revoke_tokens"]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        # Token secrets are shown as sk-live-<prefix>-...; accept the whole shown prefix.
        term = search_term.strip()
        if term.startswith("sk-live-"):
            term = term.removeprefix("sk-live-").split("-")[0]
        return super().get_search_results(request, queryset, term)

    @admin.display(description="Wallet")
    def wallet_summary(self, obj: User) -> str:
        if obj.pk is None:
            return "-"
        try:
            wallet = _wallet_of(obj)
        except WalletNotFound:
            return "No wallet"
        summary = wallet_selectors.wallet_summary(wallet=wallet)
        lots = wallet_selectors.lot_list(wallet=wallet)[:20]
        entries = wallet_selectors.ledger_entry_list(wallet=wallet)[:10]
        fmt = money.format_credits
        head = format_html(
            "<p>Balance <b>{}</b> · held {} · available {} · frozen (past expiry) {} · {}</p>",
            fmt(summary.balance),
            fmt(summary.held),
            fmt(summary.available),
            fmt(summary.frozen),
            wallet.get_status_display(),
        )
        lot_rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (lot.pk, lot.category, fmt(lot.remaining), fmt(lot.amount), lot.expires_at or "-")
                for lot in lots
            ),
        )
        entry_rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    e.created_at.strftime("%Y-%m-%d %H:%M"),
                    e.get_kind_display(),
                    fmt(e.amount),
                    fmt(e.balance_after),
                    f"{e.reference_type} {e.reference_id}",
                    e.reason,
                )
                for e in entries
            ),
        )
        return format_html(
            "{}<h4>Lots with credits (burn order)</h4><table><tr><th>Lot</th><th>Category</th>"
            "<th>Remaining</th><th>Granted</th><th>Expires</th></tr>{}</table>"
            "<h4>Recent ledger</h4><table><tr><th>When</th><th>Kind</th><th>Amount</th>"
            "<th>Balance after</th><th>Reference</th><th>Reason</th></tr>{}</table>",
            head,
            lot_rows,
            entry_rows,
        )

    def has_adjust_permission(self, request: HttpRequest) -> bool:
        user: Any = request.user
        return bool(
            user.has_perm("audit.adjust_balance") or user.has_perm("audit.adjust_balance_unlimited")
        )

    def has_disable_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("audit.disable_account"))

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("audit.revoke_tokens"))

    @staff_form_action(
        form_class=AdjustForm,
        title="Adjust balance",
        description="Adjust balance (up or down)",
        permissions=["adjust"],
    )
    def adjust_balance(
        self, request: HttpRequest, user: User, data: dict[str, Any], key: str
    ) -> str:
        entry = services.staff_wallet_adjust(
            actor=request.user,  # type: ignore[arg-type]
            wallet=_wallet_of(user),
            amount_micro=_micro(data["amount"]),
            category=data["category"],
            expires_at=data.get("expires_at"),
            reason=data["reason"],
            idempotency_key=key,
        )
        return f"adjusted by {money.format_credits(entry.amount)} credits"

    @staff_form_action(
        form_class=PromotionalForm, title="Grant promotional credits", permissions=["adjust"]
    )
    def grant_promotional(
        self, request: HttpRequest, user: User, data: dict[str, Any], key: str
    ) -> str:
        entry = services.staff_promotional_grant(
            actor=request.user,  # type: ignore[arg-type]
            wallet=_wallet_of(user),
            amount_micro=money.credits_to_micro(data["amount"]),
            expires_at=data.get("expires_at"),
            reason=data["reason"],
            idempotency_key=key,
        )
        return f"granted {money.format_credits(entry.amount)} promotional credits"

    @staff_form_action(form_class=ReasonForm, title="Disable the account", permissions=["disable"])
    def disable_account(
        self, request: HttpRequest, user: User, data: dict[str, Any], key: str
    ) -> str:
        services.staff_user_disable(
            actor=request.user,  # type: ignore[arg-type]
            user=user,
            reason=data["reason"],
        )
        return "disabled"

    @staff_form_action(form_class=ReasonForm, title="Revoke all API tokens", permissions=["revoke"])
    def revoke_tokens(
        self, request: HttpRequest, user: User, data: dict[str, Any], key: str
    ) -> str:
        count = services.staff_user_tokens_revoke(
            actor=request.user,  # type: ignore[arg-type]
            user=user,
            reason=data["reason"],
        )
        return f"revoked {count} token(s)"


admin.site.unregister(User)
admin.site.register(User, SupportUserAdmin)


# --- Usage records: charge corrections ----------------------------------------------------


class CorrectChargeForm(StaffActionForm):
    new_charge = _credits_field(
        required=False,
        min_value=Decimal(0),
        help_text="The right charge in credits; empty gives back the whole charge.",
    )
    field_order = ("new_charge", "reason", "idempotency_key")


class SupportUsageRecordAdmin(usage_admin.UsageRecordAdmin):
    actions = ["correct_charge"]
    readonly_fields = ("ledger_entries",)

    @admin.display(description="Ledger entries (charge and corrections)")
    def ledger_entries(self, obj: UsageRecord) -> str:
        entries = LedgerEntry.objects.filter(
            reference_type="usage.usagerecord", reference_id=str(obj.pk)
        ).order_by("id")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    e.created_at.strftime("%Y-%m-%d %H:%M"),
                    e.get_kind_display(),
                    money.format_credits(e.amount),
                    e.actor or "",
                    e.reason,
                )
                for e in entries
            ),
        )
        return format_html(
            "<table><tr><th>When</th><th>Kind</th><th>Amount</th><th>Staff</th><th>Reason</th>"
            "</tr>{}</table><p>Charged after corrections: {} credits</p>",
            rows,
            money.format_credits(services.usage_record_charged_net(record=obj)),
        )

    def has_correct_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("audit.correct_charge"))

    @staff_form_action(
        form_class=CorrectChargeForm,
        title="Correct the charge",
        description="Correct the charge (reversal + new charge)",
        permissions=["correct"],
    )
    def correct_charge(
        self, request: HttpRequest, record: UsageRecord, data: dict[str, Any], key: str
    ) -> str:
        new = data.get("new_charge")
        services.staff_usage_charge_correct(
            actor=request.user,  # type: ignore[arg-type]
            record=record,
            new_charge_micro=None if new is None else money.credits_to_micro(new, allow_zero=True),
            reason=data["reason"],
            idempotency_key=key,
        )
        net = services.usage_record_charged_net(record=record)
        return f"now charged {money.format_credits(net)} credits"


admin.site.unregister(UsageRecord)
admin.site.register(UsageRecord, SupportUsageRecordAdmin)


# --- Top-up orders: partial refunds ---------------------------------------------------------


class RefundForm(StaffActionForm):
    amount = forms.DecimalField(
        required=False,
        max_digits=12,
        decimal_places=2,
        min_value=Decimal("0.01"),
        help_text="Money to return; empty refunds all that is refundable (the unused part).",
    )
    field_order = ("amount", "reason", "idempotency_key")


class SupportTopUpOrderAdmin(billing_admin.TopUpOrderAdmin):
    list_filter: ClassVar[Any] = (
        *billing_admin.TopUpOrderAdmin.list_filter,
        ("created_at", admin.DateFieldListFilter),
    )
    actions = [*billing_admin.TopUpOrderAdmin.actions, "refund_amount"]

    @staff_form_action(
        form_class=RefundForm,
        title="Refund",
        description="Refund an amount (full or partial)",
        permissions=["refund"],
    )
    def refund_amount(
        self, request: HttpRequest, order: TopUpOrder, data: dict[str, Any], key: str
    ) -> str:
        amount = data.get("amount")
        made = billing_services.refund_create(
            order=order,
            amount_minor=None if amount is None else pricing.parse_amount(amount),
            idempotency_key=f"admin-{key}",
            actor=request.user,
            reason=data["reason"],
            source=Refund.Source.ADMIN,
        )
        # The refund is two transactions around the provider call; the record follows.
        services.audit_record_create(
            actor=request.user,
            action="billing.refund",
            target=order,
            reason=data["reason"],
            before={"status": order.status},
            after={
                "status": TopUpOrder.objects.get(pk=order.pk).status,
                "refund_id": made.pk,
                "refund_status": made.status,
                "amount_minor": made.amount_minor,
                "credits_micro": made.credits_micro,
            },
            idempotency_key=f"refund:{key}",
        )
        return (
            f"refund {made.get_status_display().lower()}: "
            f"{pricing.format_minor(made.amount_minor)} {made.currency.upper()}, "
            f"took back {money.format_credits(made.credits_micro)} credits"
        )


admin.site.unregister(TopUpOrder)
admin.site.register(TopUpOrder, SupportTopUpOrderAdmin)


# --- Margin report ----------------------------------------------------------------------------


class MarginFilterForm(forms.Form):
    since = forms.DateField(required=False)
    until = forms.DateField(required=False)


@admin.register(MarginReport)
class MarginReportAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Finance: credits charged (USD at the credit rate) against vendor cost, per day and
    model. ``?format=csv`` downloads the same rows."""

    def _allowed(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.has_perm("audit.read_margin_report"))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allowed(request)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not self._allowed(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        form = MarginFilterForm(request.GET or None)
        today = timezone.now().date()
        since, until = today - dt.timedelta(days=29), today
        if form.is_valid():
            since = form.cleaned_data.get("since") or since
            until = form.cleaned_data.get("until") or until
        rows = usage_selectors.usage_margin_report(since=since, until=until)
        if request.GET.get("format") == "csv":
            response = HttpResponse(content_type="text/csv")
            response["Content-Disposition"] = f'attachment; filename="margin-{since}-{until}.csv"'
            writer = csv.writer(response)
            writer.writerow(
                [
                    "day",
                    "model",
                    "requests",
                    "charged_credits",
                    "charged_usd",
                    "vendor_usd",
                    "margin_usd",
                    "margin_percent",
                ]
            )
            for row in rows:
                writer.writerow(
                    [
                        row.day,
                        row.model,
                        row.requests,
                        money.micro_to_credits(row.charged_micro),
                        row.charged_usd,
                        row.vendor_usd,
                        row.margin_usd,
                        "" if row.margin_percent is None else row.margin_percent,
                    ]
                )
            return response
        totals = {
            "requests": sum(r.requests for r in rows),
            "charged_usd": sum((r.charged_usd for r in rows), Decimal(0)),
            "vendor_usd": sum((r.vendor_usd for r in rows), Decimal(0)),
        }
        totals["margin_usd"] = totals["charged_usd"] - totals["vendor_usd"]
        context = {
            **self.admin_site.each_context(request),
            "title": "Margin report",
            "opts": self.model._meta,
            "rows": rows,
            "totals": totals,
            "since": since,
            "until": until,
            "credits_per_usd": money.credits_per_usd(),
        }
        return TemplateResponse(request, "admin/audit/margin_report.html", context)
