"""The plain console page for redeeming a code (the console issue restyles it)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from accounts.views import client_ip
from config.errors import ApplicationError
from config.redirects import safe_next
from redemption import selectors, services
from wallet import money


class RedeemForm(forms.Form):
    code = forms.CharField(
        max_length=100,
        label="Code",
        widget=forms.TextInput(
            attrs={
                "autocomplete": "off",
                "placeholder": "XXXX-XXXX-XXXX-XXXX",
                "spellcheck": "false",
            }
        ),
    )


@login_required
@require_http_methods(["GET", "POST"])
def redeem(request: HttpRequest) -> HttpResponse:
    form = RedeemForm(request.POST or None)
    status, retry_after = 200, None
    if request.method == "POST" and form.is_valid():
        try:
            result = services.code_redeem(
                user=request.user,
                code=form.cleaned_data["code"],
                ip_address=client_ip(request),
            )
        except ApplicationError as exc:
            form.add_error("code", exc.message)
            status = exc.status_code
            retry_after = exc.detail.get("retry_after")
        else:
            redemption = result.redemption
            expiry = (
                f" They expire on {redemption.expires_at:%Y-%m-%d %H:%M} UTC."
                if redemption.expires_at
                else ""
            )
            messages.success(
                request,
                f"Code redeemed: {money.format_credits(redemption.credits_micro)} credits were "
                f"added to your wallet.{expiry}",
            )
            return redirect(safe_next(request, reverse("redemption:redeem")))
    elif request.method == "POST":
        status = 400
    response = render(
        request,
        "redemption/redeem.html",
        {
            "form": form,
            "redemptions": selectors.redemption_list_for_user(user=request.user)[:20],
        },
        status=status,
    )
    if status == 429 and retry_after is not None:
        response["Retry-After"] = str(int(retry_after))
    return response
