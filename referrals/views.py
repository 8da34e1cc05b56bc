"""Invite links (``/r/<code>``), the sign-up hook that records who invited a new account, and
a plain page with the invite link, the figures and a transfer form (the console issue
restyles it)."""

from __future__ import annotations

import logging
import uuid

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from config.errors import ApplicationError
from config.redirects import safe_next
from referrals import selectors, services
from wallet import money

logger = logging.getLogger(__name__)

INVITE_COOKIE = "invite"
INVITE_SESSION_KEY = "referrals.invite_code"
_COOKIE_SALT = "referrals.invite"


@require_GET
def invite(request: HttpRequest, code: str) -> HttpResponse:
    """Remember the invite code (session and a signed cookie), then go to sign-up."""
    if request.user.is_authenticated:
        return redirect("home")
    response = redirect("accounts:signup")
    canonical = services.invite_code_normalize(code)
    if canonical is not None:
        request.session[INVITE_SESSION_KEY] = canonical
        response.set_signed_cookie(
            INVITE_COOKIE,
            canonical,
            salt=_COOKIE_SALT,
            max_age=settings.REFERRAL_COOKIE_DAYS * 86400,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure(),
        )
    return response


def signup_referral_record(request: HttpRequest, user: object) -> None:
    """Called by the sign-up view right after the account is created: record the inviter if
    the visitor came through an invite link. Never blocks a sign-up."""
    code = request.session.pop(INVITE_SESSION_KEY, None)
    if not code:
        try:
            code = request.get_signed_cookie(INVITE_COOKIE, salt=_COOKIE_SALT)
        except (KeyError, signing.BadSignature):
            return
    try:
        services.referral_record_signup(invitee=user, invite_code=code)
    except ApplicationError as exc:
        logger.info("Sign-up of user %s not recorded as a referral: %s", user, exc.code)
    except Exception:  # the account exists already; a referral is not worth a failed sign-up
        logger.exception("Recording the referral of user %s failed", user)


def forget_invite(response: HttpResponse) -> HttpResponse:
    response.delete_cookie(INVITE_COOKIE, samesite="Lax")
    return response


class TransferForm(forms.Form):
    amount = forms.CharField(
        max_length=40, required=False, help_text="Credits; empty moves the whole balance."
    )
    idempotency_key = forms.CharField(max_length=100, widget=forms.HiddenInput)


@login_required
@require_http_methods(["GET", "POST"])
def referrals_page(request: HttpRequest) -> HttpResponse:
    account = services.referral_account_get_or_create(user=request.user)
    form = TransferForm(request.POST or None, initial={"idempotency_key": uuid.uuid4().hex})
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            amount = (
                money.credits_to_micro(form.cleaned_data["amount"])
                if form.cleaned_data["amount"]
                else None
            )
            result = services.reward_transfer(
                user=request.user,
                idempotency_key=form.cleaned_data["idempotency_key"],
                amount_micro=amount,
            )
        except ApplicationError as exc:
            form.add_error("amount", exc.message)
            status = exc.status_code
        else:
            messages.success(
                request,
                f"Moved {money.format_credits(result.wallet_entry.amount)} credits to your wallet.",
            )
            return redirect(safe_next(request, reverse("referrals:page")))
    elif request.method == "POST":
        status = 400
    summary = selectors.referral_summary(account=account)
    return render(
        request,
        "referrals/page.html",
        {
            "summary": summary,
            "form": form,
            "minimum_micro": services.minimum_transfer_micro(),
            "entries": [
                (
                    entry,
                    selectors.masked_email(entry.referral.invitee.email) if entry.referral else "",
                )
                for entry in summary.recent
            ],
        },
        status=status,
    )
