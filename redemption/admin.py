"""Staff tools for redemption codes: generate a batch (the codes are downloaded once, as CSV,
at generation: only their hashes are kept), disable batches or single codes, export the state
of a batch, and see who redeemed what."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.validators import MaxValueValidator
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from accounts import selectors as account_selectors
from config import crockford
from config.admin_mixins import ReadOnlyMixin
from config.errors import ApplicationError
from redemption import codes, exports, services
from redemption.models import Redemption, RedemptionBatch, RedemptionCode
from wallet import money


def _clean_countries(value: str) -> str:
    try:
        return services.countries_clean(value)
    except ApplicationError as exc:
        raise forms.ValidationError(exc.message) from exc


class GenerateBatchForm(forms.Form):
    name = forms.CharField(max_length=120)
    credits = forms.CharField(max_length=40, help_text="Credits each redemption grants, e.g. 5.")
    code_count = forms.IntegerField(
        label="Number of codes",
        min_value=1,
        help_text="Up to the configured maximum per batch.",
    )
    uses_per_code = forms.IntegerField(
        min_value=1, initial=1, help_text="1 for one-person codes; more for a shared code."
    )
    uses_per_account = forms.IntegerField(
        min_value=1, initial=1, help_text="How many codes of this batch one account may redeem."
    )
    codes_expire_at = forms.DateTimeField(
        required=False, help_text="UTC, e.g. 2026-12-31 23:59. Empty: the codes never expire."
    )
    credit_validity_days = forms.IntegerField(
        required=False, min_value=1, help_text="Granted credits expire this many days later."
    )
    credits_expire_at = forms.DateTimeField(
        required=False, help_text="Granted credits expire at this moment at the latest (UTC)."
    )
    new_accounts_within_days = forms.IntegerField(
        required=False,
        min_value=0,
        label="New accounts only: created within (days)",
    )
    min_account_age_days = forms.IntegerField(
        required=False, min_value=1, label="Minimum account age (days)"
    )
    allowed_countries = forms.CharField(
        required=False, max_length=400, help_text="Comma-separated ISO codes, e.g. US, DE."
    )
    require_no_prior_topup = forms.BooleanField(
        required=False, label="Only accounts without a completed top-up"
    )
    allowed_emails = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Only these accounts",
        help_text="Email addresses, one per line or comma-separated. Empty: anyone.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        maximum = settings.REDEMPTION_MAX_CODES_PER_BATCH
        field = self.fields["code_count"]
        field.validators.append(MaxValueValidator(maximum))
        field.widget.attrs["max"] = maximum
        field.help_text = f"At most {maximum:,} per batch."

    def clean_credits(self) -> int:
        try:
            return money.credits_to_micro(self.cleaned_data["credits"])
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc

    def clean_allowed_countries(self) -> str:
        return _clean_countries(self.cleaned_data["allowed_countries"])

    def clean_allowed_emails(self) -> list[Any]:
        raw = self.cleaned_data["allowed_emails"].replace(",", "\n").split()
        users: list[Any] = []
        unknown: list[str] = []
        for email in dict.fromkeys(e.strip() for e in raw if e.strip()):
            user = account_selectors.user_get_by_email(email=email)
            if user is None:
                unknown.append(email)
            else:
                users.append(user)
        if unknown:
            raise forms.ValidationError(f"No account with these addresses: {', '.join(unknown)}")
        return users

    def batch_arguments(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        return {
            **{k: v for k, v in data.items() if k not in ("credits", "allowed_emails")},
            "credits_micro": data["credits"],
            "allowed_users": data["allowed_emails"],
        }


class BatchChangeForm(forms.ModelForm):
    class Meta:
        model = RedemptionBatch
        fields = (
            "name",
            "codes_expire_at",
            "credit_validity_days",
            "credits_expire_at",
            "uses_per_account",
            "new_accounts_within_days",
            "min_account_age_days",
            "allowed_countries",
            "require_no_prior_topup",
            "allowed_users",
        )

    def clean_allowed_countries(self) -> str:
        return _clean_countries(self.cleaned_data["allowed_countries"])


@admin.register(RedemptionBatch)
class RedemptionBatchAdmin(admin.ModelAdmin):
    form = BatchChangeForm
    list_display = (
        "name",
        "credits",
        "code_count",
        "uses_per_code",
        "redeemed",
        "status",
        "codes_expire_at",
        "created_at",
    )
    list_filter = ("status",)
    search_fields = ("name",)
    date_hierarchy = "created_at"
    autocomplete_fields = ("allowed_users",)
    actions = ["disable_batches", "enable_batches", "export_status"]
    readonly_fields = (
        "credits",
        "code_count",
        "uses_per_code",
        "status",
        "created_by",
        "created_at",
        "disabled_at",
        "links",
    )
    fieldsets = (
        (None, {"fields": ("name", "credits", "code_count", "uses_per_code", "status", "links")}),
        (
            "Expiry",
            {"fields": ("codes_expire_at", "credit_validity_days", "credits_expire_at")},
        ),
        (
            "Who may redeem",
            {
                "fields": (
                    "uses_per_account",
                    "new_accounts_within_days",
                    "min_account_age_days",
                    "allowed_countries",
                    "require_no_prior_topup",
                    "allowed_users",
                )
            },
        ),
        ("Record", {"fields": ("created_by", "created_at", "disabled_at")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[RedemptionBatch]:
        return super().get_queryset(request).annotate(redemption_count=Count("redemptions"))

    @admin.display(description="Credits per code", ordering="credits_micro")
    def credits(self, obj: RedemptionBatch) -> str:
        return money.format_credits(obj.credits_micro)

    @admin.display(description="Redemptions", ordering="redemption_count")
    def redeemed(self, obj: RedemptionBatch) -> int:
        return int(getattr(obj, "redemption_count", 0))

    @admin.display(description="Codes and redemptions")
    def links(self, obj: RedemptionBatch) -> str:
        if obj.pk is None:
            return "-"
        code_url = reverse("admin:redemption_redemptioncode_changelist")
        redemption_url = reverse("admin:redemption_redemption_changelist")
        return format_html(
            '<a href="{}?batch__id__exact={}">Codes</a> · '
            '<a href="{}?batch__id__exact={}">Who redeemed them</a>',
            code_url,
            obj.pk,
            redemption_url,
            obj.pk,
        )

    def get_urls(self) -> list[Any]:
        return [
            path(
                "generate/",
                self.admin_site.admin_view(self.generate_view),
                name="redemption_redemptionbatch_generate",
            ),
            *super().get_urls(),
        ]

    def add_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # A batch exists only with its codes, so "Add" is the generate form.
        return HttpResponseRedirect(reverse("admin:redemption_redemptionbatch_generate"))

    def generate_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = GenerateBatchForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                generated = services.batch_generate(**form.batch_arguments(), actor=request.user)
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                batch = generated.batch
                self.log_addition(request, batch, f"Generated {len(generated.codes)} codes.")
                response = HttpResponse(
                    exports.codes_csv(generated), content_type="text/csv; charset=utf-8"
                )
                response["Content-Disposition"] = (
                    f'attachment; filename="redemption-batch-{batch.pk}-codes.csv"'
                )
                response["Cache-Control"] = "no-store"
                return response
        context = {
            **self.admin_site.each_context(request),
            "title": "Generate redemption codes",
            "opts": self.model._meta,
            "form": form,
            "maximum": settings.REDEMPTION_MAX_CODES_PER_BATCH,
        }
        return TemplateResponse(request, "admin/redemption/generate.html", context)

    @admin.action(description="Disable the selected batches (all their codes)")
    def disable_batches(self, request: HttpRequest, queryset: QuerySet[RedemptionBatch]) -> None:
        for batch in queryset:
            services.batch_set_status(batch=batch, status=RedemptionBatch.Status.DISABLED)
        self.message_user(request, f"Disabled {len(queryset)} batches.", messages.SUCCESS)

    @admin.action(description="Enable the selected batches again")
    def enable_batches(self, request: HttpRequest, queryset: QuerySet[RedemptionBatch]) -> None:
        for batch in queryset:
            services.batch_set_status(batch=batch, status=RedemptionBatch.Status.ACTIVE)
        self.message_user(request, f"Enabled {len(queryset)} batches.", messages.SUCCESS)

    @admin.action(description="Export the state of the codes as CSV (hints, uses, who redeemed)")
    def export_status(
        self, request: HttpRequest, queryset: QuerySet[RedemptionBatch]
    ) -> HttpResponse:
        response = HttpResponse(
            exports.batch_status_csv(queryset.order_by("id")), content_type="text/csv"
        )
        response["Content-Disposition"] = 'attachment; filename="redemption-codes-status.csv"'
        return response


class RedemptionInline(ReadOnlyMixin, admin.TabularInline):
    model = Redemption
    extra = 0
    fields = ("created_at", "user", "credits_micro", "expires_at", "ip_address")
    readonly_fields = fields


@admin.register(RedemptionCode)
class RedemptionCodeAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("display", "batch", "status", "uses", "max_uses", "created_at")
    list_filter = ("status", "batch")
    # The search box takes a whole code (as a customer reads it out) or its last characters.
    search_fields = ("hint",)
    search_help_text = "A whole code (any case, with or without dashes) or its last 4 characters."
    list_select_related = ("batch",)
    actions = ["disable_codes", "enable_codes"]
    inlines = [RedemptionInline]
    fields = ("display", "batch", "status", "uses", "max_uses", "created_at", "disabled_at")
    readonly_fields = fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Actions need the change permission; every field stays read-only.
        return bool(request.user.has_perm("redemption.change_redemptioncode"))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[RedemptionCode], search_term: str
    ) -> tuple[QuerySet[RedemptionCode], bool]:
        canonical = codes.code_normalize(search_term)
        if canonical is not None:
            return queryset.filter(code_hash__in=codes.code_hash_candidates(canonical)), False
        term = crockford.normalize(search_term)
        if not term:
            return queryset, False
        return queryset.filter(hint=term[-codes.HINT_LENGTH :]), False

    @admin.display(description="Code")
    def display(self, obj: RedemptionCode) -> str:
        return obj.display

    @admin.action(description="Disable the selected codes", permissions=["change"])
    def disable_codes(self, request: HttpRequest, queryset: QuerySet[RedemptionCode]) -> None:
        for code in queryset:
            services.code_set_status(code=code, status=RedemptionCode.Status.DISABLED)
        self.message_user(request, f"Disabled {len(queryset)} codes.", messages.SUCCESS)

    @admin.action(description="Enable the selected codes again", permissions=["change"])
    def enable_codes(self, request: HttpRequest, queryset: QuerySet[RedemptionCode]) -> None:
        for code in queryset:
            services.code_set_status(code=code, status=RedemptionCode.Status.ACTIVE)
        self.message_user(request, f"Enabled {len(queryset)} codes.", messages.SUCCESS)


@admin.register(Redemption)
class RedemptionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("created_at", "user", "code", "batch", "credits", "expires_at", "ip_address")
    list_filter = ("batch",)
    search_fields = ("user__email", "batch__name")
    date_hierarchy = "created_at"
    list_select_related = ("user", "code", "batch")

    @admin.display(description="Credits", ordering="credits_micro")
    def credits(self, obj: Redemption) -> str:
        return money.format_credits(obj.credits_micro)
