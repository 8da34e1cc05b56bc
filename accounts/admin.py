from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm, UserCreationForm
from django.http import HttpRequest

from accounts import services
from accounts.models import (
    ApiToken,
    BillingTier,
    Invitation,
    Membership,
    Organization,
    TokenGroup,
    User,
)
from config.admin_mixins import ReadOnlyMixin
from config.errors import ApplicationError
from wallet import money


class EmailUserCreationForm(UserCreationForm):
    class Meta:
        model = User
        fields = ("email",)


class EmailUserChangeForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    add_form = EmailUserCreationForm
    form = EmailUserChangeForm
    ordering = ("email",)
    list_display = ("email", "full_name", "country", "is_active", "is_staff", "date_joined")
    list_filter = ("is_active", "is_staff", "country")
    search_fields = ("email", "full_name")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("full_name", "country")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ("user",)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created_at")
    search_fields = ("name", "slug")
    inlines = [MembershipInline]


# --- Billing tiers, token groups, API tokens -------------------------------------------


@admin.register(BillingTier)
class BillingTierAdmin(admin.ModelAdmin):
    list_display = ("name", "rate", "description", "created_at")
    search_fields = ("name",)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # records keep the rate they were charged at; tiers stay for reference


class TokenGroupForm(forms.ModelForm):
    class Meta:
        model = TokenGroup
        fields = ("name", "tier", "allowed_models", "is_default", "description")

    def clean_allowed_models(self) -> list[str]:
        try:
            return services.model_rules_clean(self.cleaned_data.get("allowed_models") or [])
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc

    def _get_validation_exclusions(self) -> set[str]:
        # "One default group" holds after saving: token_group_save moves the flag from the
        # old default in the same transaction. Checking it on the form would refuse that.
        base: Any = super()
        return {*base._get_validation_exclusions(), "is_default"}


@admin.register(TokenGroup)
class TokenGroupAdmin(admin.ModelAdmin):
    form = TokenGroupForm
    list_display = ("name", "tier", "is_default", "allowed_models", "created_at")
    list_filter = ("tier", "is_default")
    search_fields = ("name",)

    def save_model(self, request: HttpRequest, obj: TokenGroup, form: Any, change: bool) -> None:
        services.token_group_save(group=obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = (
            "name",
            "group",
            "quota_micro",
            "expires_at",
            "allowed_models",
            "allowed_ips",
            "budget_period",
            "budget_micro",
            "rate_limit_rpm",
            "rate_limit_tpm",
            "log_content",
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        budget = data.get("budget_micro")
        if budget is not None and budget < 0:
            self.add_error("budget_micro", "The budget cannot be negative.")
        if bool(data.get("budget_period")) != (budget is not None):
            self.add_error("budget_micro", "A periodic budget needs both a period and an amount.")
        return data

    def clean_quota_micro(self) -> int | None:
        quota = self.cleaned_data.get("quota_micro")
        if quota is not None and quota < 0:
            raise forms.ValidationError("The quota cannot be negative.")
        return quota

    def clean_allowed_models(self) -> list[str]:
        try:
            return services.model_rules_clean(self.cleaned_data.get("allowed_models") or [])
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc

    def clean_allowed_ips(self) -> list[str]:
        try:
            return services.ip_rules_clean(self.cleaned_data.get("allowed_ips") or [])
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created by their owners (console, ``create_api_token``): the secret is
    shown to them once. Staff can change limits and group, and revoke."""

    form = ApiTokenForm
    list_display = (
        "name",
        "user",
        "display_prefix",
        "group",
        "status",
        "quota_micro",
        "used_micro",
        "last_used_at",
        "expires_at",
    )
    list_filter = ("status", "group")
    search_fields = ("name", "prefix", "user__email")
    list_select_related = ("user", "group")
    readonly_fields = (
        "user",
        "wallet",
        "organization",
        "membership",
        "display_prefix",
        "scopes",
        "status",
        "used_micro",
        "budget_status",
        "last_used_at",
        "created_at",
        "revoked_at",
        "rotated_at",
    )
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        data = form.cleaned_data
        quota = data.get("quota_micro")
        services.api_token_update(
            token=obj,
            name=data["name"],
            group=data["group"],
            quota_credits=None if quota is None else money.micro_to_credits(quota),
            expires_at=data.get("expires_at"),
            allowed_models=data.get("allowed_models") or [],
            allowed_ips=data.get("allowed_ips") or [],
            budget_period=data.get("budget_period") or "",
            budget_credits=(
                None
                if data.get("budget_micro") is None
                else money.micro_to_credits(data["budget_micro"])
            ),
            rate_limit_rpm=data.get("rate_limit_rpm"),
            rate_limit_tpm=data.get("rate_limit_tpm"),
            log_content=bool(data.get("log_content")),
        )

    @admin.display(description="Budget this period")
    def budget_status(self, token: ApiToken) -> str:
        from usage.selectors import token_budget_status  # usage depends on accounts

        budget = token_budget_status(token=token) if token.pk else None
        if budget is None:
            return "No periodic budget"
        return (
            f"{money.format_credits(budget.used_micro)} used "
            f"(+{money.format_credits(budget.in_flight_micro)} in flight) of "
            f"{money.format_credits(budget.limit_micro)} credits, {budget.period}; "
            f"resets {budget.resets_at:%Y-%m-%d %H:%M} UTC"
        )

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: Any) -> None:
        for token in queryset:
            services.api_token_revoke(token=token)
        self.message_user(request, f"Revoked {queryset.count()} token(s).")


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Invitations are written by owners and admins in the console; staff look."""

    list_display = ("email", "organization", "role", "created_at", "expires_at", "accepted_at")
    list_filter = ("role",)
    search_fields = ("email", "organization__name", "organization__slug")
    exclude = ("secret_hash",)
