"""Forms of the console: they parse and validate input; the services decide."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms

from accounts.models import ApiToken, Membership
from billing.models import TopUpOrder
from usage.models import UsageRecord
from wallet.models import LedgerEntry


def _date(label: str) -> forms.DateField:
    return forms.DateField(
        label=label, required=False, widget=forms.DateInput(attrs={"type": "date"})
    )


def _lines(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", "\n").splitlines() if part.strip()]


class DateRangeForm(forms.Form):
    date_from = _date("From")
    date_to = _date("To")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return data


class UsageFilterForm(DateRangeForm):
    wallet = forms.ChoiceField(label="Wallet", required=False)
    model = forms.ChoiceField(label="Model", required=False)
    token = forms.TypedChoiceField(label="Token", required=False, coerce=int, empty_value=None)
    status = forms.ChoiceField(
        label="Status",
        required=False,
        choices=[("", "Any status"), *UsageRecord.Status.choices],
    )

    def __init__(
        self,
        data: Any,
        *,
        models: list[str],
        tokens: list[ApiToken],
        organizations: list[Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        wallet_field: Any = self.fields["wallet"]
        wallet_field.choices = [("", "My wallet"), *((o.slug, o.name) for o in organizations)]
        if not organizations:
            del self.fields["wallet"]
        model_field: Any = self.fields["model"]
        model_field.choices = [("", "Any model"), *((m, m) for m in models)]
        token_field: Any = self.fields["token"]
        token_field.choices = [("", "Any token"), *((t.pk, t.name) for t in tokens)]


class BillFilterForm(DateRangeForm):
    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "Any status"), *TopUpOrder.Status.choices]
    )
    payment_method = forms.ChoiceField(
        label="Payment method",
        required=False,
        choices=[("", "Any method"), *TopUpOrder.PaymentMethod.choices],
    )


class LedgerFilterForm(DateRangeForm):
    kind = forms.ChoiceField(
        label="Kind", required=False, choices=[("", "Any kind"), *LedgerEntry.Kind.choices]
    )


class TopUpForm(forms.Form):
    package = forms.CharField(required=False, max_length=40)
    amount = forms.CharField(required=False, max_length=20, label="Custom amount")
    payment_method = forms.ChoiceField(
        label="Payment method", choices=TopUpOrder.PaymentMethod.choices
    )
    idempotency_key = forms.CharField(max_length=100, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("package") and not (data.get("amount") or "").strip():
            raise forms.ValidationError("Choose a package or enter an amount.")
        return data


class TokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100, label="Name")
    group = forms.TypedChoiceField(label="Group", coerce=int, required=False, empty_value=None)
    organization = forms.ChoiceField(label="Spends from", required=False)
    quota = forms.CharField(
        max_length=30, required=False, label="Quota (credits)", help_text="Empty: no quota."
    )
    expires_on = forms.DateField(
        required=False,
        label="Expires on",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Empty: never.",
    )
    models = forms.CharField(
        required=False,
        label="Allowed models",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One per line or comma-separated; patterns such as gpt-4o* work. Empty: all.",
    )
    ips = forms.CharField(
        required=False,
        label="Allowed IP addresses",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Addresses or CIDR ranges. Empty: anywhere.",
    )
    scopes = forms.MultipleChoiceField(
        choices=ApiToken.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[ApiToken.Scope.INFERENCE],
        label="Scopes",
    )
    budget_period = forms.ChoiceField(
        choices=ApiToken.BudgetPeriod.choices,
        required=False,
        label="Budget period",
        help_text="Calendar periods in UTC; the budget starts again on its own.",
    )
    budget = forms.CharField(max_length=30, required=False, label="Budget per period (credits)")
    rate_limit_rpm = forms.IntegerField(
        required=False, min_value=1, label="Requests per minute", help_text="Empty: no limit."
    )
    rate_limit_tpm = forms.IntegerField(
        required=False, min_value=1, label="Tokens per minute", help_text="Empty: no limit."
    )
    log_content = forms.BooleanField(
        required=False,
        label="Keep prompts and responses",
        help_text="Off by default. Kept for the retention period, then deleted.",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if bool(data.get("budget_period")) != bool(data.get("budget")):
            raise forms.ValidationError("A budget needs both a period and an amount.")
        return data

    def __init__(
        self, data: Any = None, *, groups: list[Any], organizations: list[Any], **kwargs: Any
    ) -> None:
        super().__init__(data, **kwargs)
        group_field: Any = self.fields["group"]
        group_field.choices = [(g.pk, g.name) for g in groups]
        org_field: Any = self.fields["organization"]
        org_field.choices = [
            ("", "My wallet"),
            *((o.slug, f"{o.name} (pool)") for o in organizations),
        ]

    @property
    def model_rules(self) -> list[str]:
        return _lines(self.cleaned_data.get("models") or "")

    @property
    def ip_rules(self) -> list[str]:
        return _lines(self.cleaned_data.get("ips") or "")

    @property
    def expires_at(self) -> dt.datetime | None:
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)


class MemberLimitForm(forms.Form):
    membership = forms.IntegerField(widget=forms.HiddenInput)
    limit = forms.CharField(
        max_length=30, required=False, label="Monthly limit (credits)", help_text="Empty: none."
    )


class MemberInviteForm(forms.Form):
    email = forms.EmailField(label="Email of an existing account")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)
    limit = forms.CharField(
        max_length=30, required=False, label="Monthly limit (credits)", help_text="Empty: none."
    )


class SettingsForm(forms.Form):
    threshold = forms.CharField(
        max_length=30,
        label="Low-balance alert threshold (credits)",
        help_text="You are warned when your balance falls under this.",
    )
    notification_email = forms.EmailField(
        required=False,
        label="Notification email",
        help_text="Where alerts go. Empty: your log-in email.",
    )
