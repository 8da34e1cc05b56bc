"""Staff tools for top-ups: packages and bonus rules are edited here; orders, refunds and
webhook events are read-only records changed only through ``billing.services`` (the actions
below). The full support console arrives with its own issue."""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from billing import pricing, services
from billing.models import (
    BonusRule,
    RecurringGrant,
    Refund,
    TopUpOrder,
    TopUpPackage,
    WebhookEvent,
)
from config.admin_mixins import ReadOnlyMixin
from config.errors import ApplicationError
from wallet import money


@admin.register(TopUpPackage)
class TopUpPackageAdmin(admin.ModelAdmin):
    list_display = ("name", "code", "kind", "price", "currency", "is_active", "sort_order")
    list_editable = ("is_active", "sort_order")
    list_filter = ("kind", "is_active", "currency")
    search_fields = ("name", "code")
    prepopulated_fields = {"code": ("name",)}
    readonly_fields = ("created_at", "updated_at")

    @admin.display(description="Price", ordering="amount_minor")
    def price(self, obj: TopUpPackage) -> str:
        return pricing.format_minor(obj.amount_minor)


@admin.register(BonusRule)
class BonusRuleAdmin(admin.ModelAdmin):
    list_display = ("currency", "from_amount", "to_amount", "percent", "is_active", "note")
    list_filter = ("currency", "is_active")

    @admin.display(description="From (inclusive)", ordering="min_amount_minor")
    def from_amount(self, obj: BonusRule) -> str:
        return pricing.format_minor(obj.min_amount_minor)

    @admin.display(description="To (inclusive)", ordering="max_amount_minor")
    def to_amount(self, obj: BonusRule) -> str:
        if obj.max_amount_minor is None:
            return "no limit"
        return pricing.format_minor(obj.max_amount_minor)


class RefundInline(ReadOnlyMixin, admin.TabularInline):
    model = Refund
    extra = 0
    fields = (
        "created_at",
        "status",
        "source",
        "amount_minor",
        "paid_micro",
        "bonus_micro",
        "shortfall_micro",
        "provider_refund_id",
        "requested_by",
        "error",
    )
    readonly_fields = fields


@admin.register(TopUpOrder)
class TopUpOrderAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "order_no",
        "user",
        "status",
        "flagged",
        "price",
        "currency",
        "credits",
        "provider",
        "created_at",
        "completed_at",
    )
    list_filter = (
        "status",
        "provider",
        "payment_method",
        ("flagged_at", admin.EmptyFieldListFilter),
    )
    search_fields = (
        "order_no",
        "user__email",
        "provider_session_id",
        "provider_payment_id",
    )
    date_hierarchy = "created_at"
    inlines = [RefundInline]
    actions = ["confirm_manual_payment", "refund_unused", "sync_with_provider"]

    @admin.display(description="Price", ordering="amount_minor")
    def price(self, obj: TopUpOrder) -> str:
        return pricing.format_minor(obj.amount_minor)

    @admin.display(description="Credits")
    def credits(self, obj: TopUpOrder) -> str:
        return money.format_credits(obj.total_micro)

    @admin.display(description="Flagged", boolean=True)
    def flagged(self, obj: TopUpOrder) -> bool:
        return obj.is_flagged

    def has_refund_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("billing.refund_topuporder"))

    def has_confirm_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("billing.confirm_topuporder"))

    def _each(self, request: HttpRequest, queryset: QuerySet[TopUpOrder], work: Any) -> None:
        for order in queryset:
            try:
                message = work(order)
            except ApplicationError as exc:
                self.message_user(request, f"{order}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{order}: {message}", messages.SUCCESS)

    @admin.action(
        description="Confirm bank transfer received (manual orders)", permissions=["confirm"]
    )
    def confirm_manual_payment(self, request: HttpRequest, queryset: QuerySet[TopUpOrder]) -> None:
        def confirm(order: TopUpOrder) -> str:
            order = services.order_confirm_manual_payment(order=order, actor=request.user)
            return f"now {order.get_status_display().lower()}"

        self._each(request, queryset, confirm)

    @admin.action(
        description="Refund the unused part (full refundable amount)", permissions=["refund"]
    )
    def refund_unused(self, request: HttpRequest, queryset: QuerySet[TopUpOrder]) -> None:
        def refund(order: TopUpOrder) -> str:
            made = services.refund_create(
                order=order,
                amount_minor=None,
                idempotency_key=f"admin-{uuid.uuid4()}",
                actor=request.user,
                reason=f"Refund from the admin by {request.user}",
                source=Refund.Source.ADMIN,
            )
            return (
                f"refunded {pricing.format_minor(made.amount_minor)} {made.currency.upper()}, "
                f"took back {money.format_credits(made.credits_micro)} credits"
            )

        self._each(request, queryset, refund)

    @admin.action(description="Ask the payment provider for the current status")
    def sync_with_provider(self, request: HttpRequest, queryset: QuerySet[TopUpOrder]) -> None:
        self._each(
            request,
            queryset,
            lambda order: f"status {services.order_sync(order=order).get_status_display()}",
        )


@admin.register(Refund)
class RefundAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "order", "status", "source", "amount_minor", "currency", "created_at")
    list_filter = ("status", "source")
    search_fields = ("order__order_no", "provider_refund_id", "idempotency_key")


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("event_id", "type", "status", "attempts", "order", "received_at")
    list_filter = ("provider", "status", "type")
    search_fields = ("event_id", "order__order_no")
    actions = ["process_again"]

    @admin.action(description="Process again (failed events)")
    def process_again(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        for event in queryset:
            result = services.webhook_event_process(event_id=event.pk)
            self.message_user(request, f"{event.event_id}: {result.event.status}")


class RecurringGrantForm(forms.ModelForm):
    """Staff type credits; the grant keeps µcr."""

    credits_per_month = forms.DecimalField(max_digits=24, decimal_places=6, min_value=0)
    rollover_cap = forms.DecimalField(
        max_digits=24,
        decimal_places=6,
        min_value=0,
        initial=0,
        help_text="Most unused credits carried into the next month (0: none).",
    )

    class Meta:
        model = RecurringGrant
        fields = ("name", "wallet", "starts_on", "ends_on", "is_active")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["credits_per_month"] = money.micro_to_credits(
                self.instance.credits_per_month_micro
            )
            self.initial["rollover_cap"] = money.micro_to_credits(self.instance.rollover_cap_micro)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            if data.get("credits_per_month") is not None:
                self.instance.credits_per_month_micro = money.credits_to_micro(
                    data["credits_per_month"]
                )
            self.instance.rollover_cap_micro = money.credits_to_micro(
                data.get("rollover_cap") or 0, allow_zero=True
            )
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc
        return data


@admin.register(RecurringGrant)
class RecurringGrantAdmin(admin.ModelAdmin):
    """Plan allowances. Granting happens in ``billing.tasks.recurring_grants``; editing a
    grant changes future months only (a month is granted once)."""

    form = RecurringGrantForm
    list_display = (
        "name",
        "wallet",
        "monthly",
        "rollover_cap",
        "starts_on",
        "ends_on",
        "is_active",
    )
    list_filter = ("is_active",)
    search_fields = ("name", "wallet__user__email", "wallet__organization__slug")
    raw_id_fields = ("wallet",)
    readonly_fields = ("created_by", "created_at")

    @admin.display(description="Credits per month", ordering="credits_per_month_micro")
    def monthly(self, obj: RecurringGrant) -> str:
        return money.format_credits(obj.credits_per_month_micro)

    @admin.display(description="Rollover cap", ordering="rollover_cap_micro")
    def rollover_cap(self, obj: RecurringGrant) -> str:
        return money.format_credits(obj.rollover_cap_micro)

    def save_model(
        self, request: HttpRequest, obj: RecurringGrant, form: Any, change: bool
    ) -> None:
        if not change:
            obj.created_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)
