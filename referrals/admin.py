"""Staff tools for invite rewards: reward rules are edited here (their terms are fixed once
saved; one rule is active at a time); accounts, referrals and the reward ledger are
read-only records changed only through ``referrals.services``."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from config.admin_mixins import ReadOnlyMixin
from config.errors import ApplicationError
from referrals import services
from referrals.models import Referral, ReferralAccount, ReferralLedgerEntry, RewardRule
from wallet import money


def _credits_field(label: str, help_text: str) -> forms.CharField:
    return forms.CharField(label=label, required=False, max_length=40, help_text=help_text)


class RewardRuleForm(forms.ModelForm):
    """Amounts are typed in credits and stored in µcr."""

    fixed_credits = _credits_field("Fixed reward (credits)", "For the fixed basis, e.g. 5.")
    signup_credits = _credits_field(
        "Sign-up credits for the invitee", "Promotional credits at sign-up; empty: none."
    )

    class Meta:
        model = RewardRule
        fields = (
            "name",
            "basis",
            "percent",
            "window_days",
            "signup_credits_days",
            "is_active",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:  # terms are fixed once saved
            for name in ("fixed_credits", "signup_credits"):
                self.fields.pop(name, None)

    def _micro(self, name: str) -> int | None:
        value = (self.cleaned_data.get(name) or "").strip()
        if not value:
            return None
        try:
            return money.credits_to_micro(value)
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc

    def clean_fixed_credits(self) -> int | None:
        return self._micro("fixed_credits")

    def clean_signup_credits(self) -> int | None:
        return self._micro("signup_credits")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        # Set before the model's own validation runs (terms exist only on the add form).
        if self.instance.pk is None:
            self.instance.fixed_micro = data.get("fixed_credits")
            self.instance.signup_credits_micro = data.get("signup_credits") or 0
        return data


@admin.register(RewardRule)
class RewardRuleAdmin(admin.ModelAdmin):
    form = RewardRuleForm
    list_display = ("name", "basis", "percent", "window_days", "fixed", "signup", "is_active")
    list_filter = ("is_active", "basis")
    actions = ["activate", "deactivate"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # Terms are fixed once saved, so every past reward is explained by its rule.
        if obj is None:
            return ()
        return ("basis", "percent", "window_days", "fixed", "signup", "signup_credits_days")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return (
                "name",
                "basis",
                "percent",
                "window_days",
                "fixed_credits",
                "signup_credits",
                "signup_credits_days",
                "is_active",
            )
        return ("name", *self.get_readonly_fields(request, obj), "is_active")

    @admin.display(description="Fixed reward")
    def fixed(self, obj: RewardRule) -> str:
        return money.format_credits(obj.fixed_micro) if obj.fixed_micro else "-"

    @admin.display(description="Sign-up credits")
    def signup(self, obj: RewardRule) -> str:
        return money.format_credits(obj.signup_credits_micro) if obj.signup_credits_micro else "-"

    @admin.action(description="Make the selected rule the active one")
    def activate(self, request: HttpRequest, queryset: QuerySet[RewardRule]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one rule to activate.", messages.ERROR)
            return
        rule = queryset.get()
        services.reward_rule_activate(rule=rule)
        self.message_user(request, f"“{rule.name}” is now the active rule.", messages.SUCCESS)

    @admin.action(description="Deactivate (no rewards until a rule is active)")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[RewardRule]) -> None:
        if queryset.filter(is_active=True).exists():
            services.reward_rule_activate(rule=None)
        self.message_user(request, "No rule is active now.", messages.SUCCESS)


class EntryInline(ReadOnlyMixin, admin.TabularInline):
    model = ReferralLedgerEntry
    extra = 0
    fields = ("created_at", "kind", "amount", "balance_after", "debt_after", "note")
    readonly_fields = fields
    ordering = ("-id",)


@admin.register(ReferralAccount)
class ReferralAccountAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("user", "code", "proceeds", "earned", "owed", "created_at")
    search_fields = ("user__email", "code")
    list_select_related = ("user",)
    fields = ("user", "code", "proceeds", "earned", "owed", "created_at")
    readonly_fields = fields
    inlines = [EntryInline]

    @admin.display(description="Proceeds", ordering="balance")
    def proceeds(self, obj: ReferralAccount) -> str:
        return money.format_credits(obj.balance)

    @admin.display(description="Total earned", ordering="total_earned")
    def earned(self, obj: ReferralAccount) -> str:
        return money.format_credits(obj.total_earned)

    @admin.display(description="Debt", ordering="debt")
    def owed(self, obj: ReferralAccount) -> str:
        return money.format_credits(obj.debt)


@admin.register(Referral)
class ReferralAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("created_at", "inviter", "invitee", "invite_code", "rule")
    search_fields = ("inviter__email", "invitee__email", "invite_code")
    list_select_related = ("inviter", "invitee", "rule")
    date_hierarchy = "created_at"
