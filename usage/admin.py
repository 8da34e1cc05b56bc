"""Prices are versioned: staff add versions (a new price, or taking a model off the
catalog) but never edit one, because usage records point at the exact version they were
charged at. Authorizations and usage records are read-only."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from usage import channels, services
from usage.models import Authorization, ModelPrice, UpstreamChannel, UsageRecord
from wallet import admin as wallet_admin

_VERSION_FIELDS = (
    "model",
    "display_name",
    "provider",
    "category",
    "input_usd_per_mtok",
    "cached_input_usd_per_mtok",
    "output_usd_per_mtok",
    "reasoning_usd_per_mtok",
    "request_usd",
    "unit_usd",
    "unit_name",
    "max_output_tokens",
    "active",
)


class ModelPriceForm(forms.ModelForm):
    class Meta:
        model = ModelPrice
        fields = (*_VERSION_FIELDS, "effective_from")

    def clean_effective_from(self) -> Any:
        value = self.cleaned_data["effective_from"]
        if value is not None and value < timezone.now() - dt.timedelta(minutes=1):
            raise forms.ValidationError(
                "A new price cannot take effect in the past: records already charged must "
                "keep the price they were charged at."
            )
        return value


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    form = ModelPriceForm
    list_display = (
        "model",
        "display_name",
        "provider",
        "category",
        "input_usd_per_mtok",
        "output_usd_per_mtok",
        "request_usd",
        "unit_usd",
        "active",
        "effective_from",
    )
    list_filter = ("provider", "category", "active")
    search_fields = ("model", "display_name", "provider")
    ordering = ("model", "-effective_from")
    readonly_fields = ("new_version", "created_by", "created_at")

    @admin.display(description="Change this price")
    def new_version(self, obj: ModelPrice) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:usage_modelprice_add") + f"?copy={obj.pk}"
        return format_html('<a href="{}">Add a new version based on this one</a>', url)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial: dict[str, Any] = dict(super().get_changeform_initial_data(request))
        source = ModelPrice.objects.filter(pk=request.GET.get("copy") or 0).first()
        if source is not None:
            initial.update({name: getattr(source, name) for name in _VERSION_FIELDS})
        initial.setdefault("effective_from", timezone.now())
        return initial

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: Any, change: bool) -> None:
        data = form.cleaned_data
        created = services.model_price_create(
            **{name: data.get(name) for name in _VERSION_FIELDS},
            effective_from=data.get("effective_from"),
            created_by=request.user,
        )
        obj.pk = created.pk
        obj._state.adding = False


class ReadOnlyAdmin(wallet_admin.ReadOnlyAdmin):
    show_full_result_count = False  # no COUNT(*) over millions of rows per page


@admin.register(Authorization)
class AuthorizationAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "user", "model", "amount_micro", "settled_at")
    search_fields = ("request_id", "user__email")
    list_select_related = ("user",)
    raw_id_fields = ("token", "user", "wallet", "membership", "hold", "price", "token_group")


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "created_at",
        "user",
        "model",
        "status",
        "input_tokens",
        "output_tokens",
        "cost_micro",
        "charged_micro",
        "shortfall_micro",
    )
    list_filter = ("status",)
    search_fields = ("request_id", "user__email", "model")
    list_select_related = ("user",)
    raw_id_fields = ("authorization", "wallet", "user", "token", "token_group", "price")


class UpstreamChannelForm(forms.ModelForm):
    """The API key is write-only: the field is always shown empty, and leaving it empty
    keeps the stored key."""

    base_url = forms.URLField(
        max_length=300,
        assume_scheme="https",
        help_text=UpstreamChannel._meta.get_field("base_url").help_text,
    )
    new_api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Never shown again after saving. Leave empty to keep the current key.",
    )

    class Meta:
        model = UpstreamChannel
        fields = ("name", "base_url", "model_map", "priority", "enabled")

    def _clean_with(self, name: str, clean: Any) -> Any:
        try:
            return clean(self.cleaned_data.get(name))
        except channels.InvalidChannel as exc:
            raise forms.ValidationError(exc.message) from exc

    def clean_base_url(self) -> str:
        return str(self._clean_with("base_url", channels.channel_base_url_clean))

    def clean_model_map(self) -> dict[str, str]:
        return dict(self._clean_with("model_map", channels.channel_model_map_clean))


@admin.register(UpstreamChannel)
class UpstreamChannelAdmin(admin.ModelAdmin):
    form = UpstreamChannelForm
    list_display = ("name", "base_url", "priority", "enabled", "key", "updated_at")
    list_filter = ("enabled",)
    search_fields = ("name", "base_url")
    readonly_fields = ("key", "created_at", "updated_at")
    fields = (
        "name",
        "base_url",
        "new_api_key",
        "key",
        "model_map",
        "priority",
        "enabled",
        "created_at",
        "updated_at",
    )

    @admin.display(description="Stored key")
    def key(self, obj: UpstreamChannel) -> str:
        if not obj.api_key:
            return "none"
        return f"…{obj.api_key_hint}" if obj.api_key_hint else "set"

    def save_model(
        self, request: HttpRequest, obj: UpstreamChannel, form: Any, change: bool
    ) -> None:
        channels.upstream_channel_save(channel=obj, api_key=form.cleaned_data.get("new_api_key"))
