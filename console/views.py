"""The customer console: server-rendered pages over the apps' services and selectors.

Every page reads only the signed-in user's objects (and those of organizations they belong
to); an object of anyone else is answered as missing (404), never as forbidden, so ids
reveal nothing. Errors from services are shown in words (``ApplicationError.message``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, cast
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.models import ApiToken, Membership, User
from billing import pricing as billing_pricing
from billing import selectors as billing_selectors
from billing import services as billing_services
from billing.models import TopUpOrder
from billing.providers import provider_for_method
from config.errors import ApplicationError
from console import forms
from console.charts import daily_chart
from redemption.views import RedeemForm
from referrals import selectors as referral_selectors
from referrals import services as referral_services
from referrals.views import TransferForm
from usage import consumption
from usage import selectors as usage_selectors
from usage.errors import UsageRecordNotFound
from usage.export import UsageExport
from usage.rollups import day_start
from wallet import money
from wallet import selectors as wallet_selectors
from wallet import services as wallet_services
from wallet.models import Wallet

SECRET_SESSION_KEY = "console.new_token_secret"  # noqa: S105 (a session key name)


def _user(request: HttpRequest) -> User:
    """The signed-in user (every view here is behind ``login_required``)."""
    return cast(User, request.user)


def _wallet(request: HttpRequest) -> Wallet:
    return wallet_selectors.wallet_get_for_user(user=_user(request))


def _page(request: HttpRequest, items: Any) -> Any:
    return Paginator(items, settings.CONSOLE_PAGE_SIZE).get_page(request.GET.get("page"))


def _query_without_page(request: HttpRequest) -> str:
    params = request.GET.copy()
    params.pop("page", None)
    return params.urlencode()


def _payment_methods() -> list[tuple[str, str]]:
    available = []
    for value, label in TopUpOrder.PaymentMethod.choices:
        try:
            provider_for_method(value)
        except ApplicationError:
            continue
        available.append((value, label))
    return available


# --- Wallet (home) ----------------------------------------------------------------------


@login_required
@require_GET
def wallet_page(request: HttpRequest) -> HttpResponse:
    wallet = _wallet(request)
    currency = billing_pricing.billing_currency()
    packages = []
    for package in billing_selectors.package_list_active(currency=currency):
        quote = billing_pricing.quote(amount_minor=package.amount_minor, currency=currency)
        packages.append((package, quote, billing_pricing.format_minor(quote.amount_minor)))
    preview, preview_error = None, ""
    amount = request.GET.get("amount", "").strip()
    if amount:
        try:
            preview, _ = billing_services.topup_quote(amount=amount, currency=currency)
        except ApplicationError as exc:
            preview_error = exc.message
    account = referral_services.referral_account_get_or_create(user=_user(request))
    return render(
        request,
        "console/home.html",
        {
            "wallet": wallet,
            "summary": wallet_selectors.wallet_summary(wallet=wallet),
            "is_low": wallet_selectors.wallet_is_low(wallet=wallet),
            "threshold": wallet_selectors.wallet_low_balance_threshold(wallet=wallet),
            "usage": consumption.usage_totals(wallet_id=wallet.pk, user=_user(request)),
            "packages": packages,
            "currency": currency.upper(),
            "amount": amount,
            "preview": preview,
            "preview_amount": billing_pricing.format_minor(preview.amount_minor) if preview else "",
            "preview_error": preview_error,
            "bonus_tiers": [
                (billing_pricing.format_minor(rule.min_amount_minor), rule.percent.normalize())
                for rule in billing_selectors.bonus_rule_list_active(currency=currency)
                if rule.percent
            ],
            "limits": (
                billing_pricing.format_minor(billing_pricing.limit_minor("min")),
                billing_pricing.format_minor(billing_pricing.limit_minor("max")),
            ),
            "methods": _payment_methods(),
            "topup_key": uuid.uuid4().hex,
            "redeem_form": RedeemForm(),
            "referral": referral_selectors.referral_summary(account=account, recent=0),
            "transfer_form": TransferForm(initial={"idempotency_key": uuid.uuid4().hex}),
            "minimum_transfer": referral_services.minimum_transfer_micro(),
        },
    )


@login_required
@require_POST
def topup(request: HttpRequest) -> HttpResponse:
    """Create a top-up order and send the customer to pay it (Stripe Checkout), or to the
    order's page (bank transfer instructions)."""
    form = forms.TopUpForm(request.POST)
    home = reverse("home")
    if not form.is_valid():
        messages.error(request, " ".join(str(m) for errs in form.errors.values() for m in errs))
        return redirect(home)
    data = form.cleaned_data
    try:
        order = billing_services.topup_order_create(
            user=_user(request),
            amount=data["amount"] if not data["package"] else None,
            package_code=data["package"] or None,
            payment_method=data["payment_method"],
            client_key=data["idempotency_key"],
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        query = f"?{urlencode({'amount': data['amount']})}" if data["amount"] else ""
        return redirect(home + query)
    if order.status == TopUpOrder.Status.PENDING and order.checkout_url:
        return HttpResponseRedirect(order.checkout_url)
    return redirect(f"{reverse('billing:return')}?order={order.order_no}")


# --- Bills ------------------------------------------------------------------------------


def _day_start(day: dt.date | None, *, after: bool = False) -> dt.datetime | None:
    """Midnight UTC of ``day`` (of the next day with ``after``: an exclusive end)."""
    return None if day is None else day_start(day + dt.timedelta(days=int(after)))


@login_required
@require_GET
def bills(request: HttpRequest) -> HttpResponse:
    form = forms.BillFilterForm(request.GET or None)
    data = form.cleaned_data if form.is_valid() else {}
    orders = billing_selectors.topup_order_list_for_user(
        user=_user(request),
        status=data.get("status") or None,
        created_after=_day_start(data.get("date_from")),
        created_before=_day_start(data.get("date_to"), after=True),
        payment_method=data.get("payment_method") or None,
    )
    page = _page(request, orders)
    return render(
        request,
        "console/bills.html",
        {
            "form": form,
            "page": page,
            "rows": [(o, billing_pricing.format_minor(o.amount_minor)) for o in page],
            "query": _query_without_page(request),
        },
    )


# --- Usage records ----------------------------------------------------------------------


def _usage_wallet(request: HttpRequest) -> Wallet:
    """The wallet whose usage is shown: the user's own, or the pool of an organization they
    belong to (``?wallet=<slug>``); only the user's own records in it are ever listed."""
    slug = request.GET.get("wallet", "")
    if not slug:
        return _wallet(request)
    organization = account_selectors.organization_get_for_user(user=_user(request), slug=slug)
    if organization is None:
        raise Http404("No such wallet.")
    return wallet_selectors.wallet_get_for_organization(organization=organization)


def _usage_filters(
    request: HttpRequest, wallet: Wallet
) -> tuple[forms.UsageFilterForm, consumption.ReportFilters, list[ApiToken]]:
    user = _user(request)
    tokens = list(account_selectors.api_token_list_for_user(user=user))
    models = consumption.usage_model_names(wallet_id=wallet.pk, user=user)
    data: Any = request.GET
    if not any(key in request.GET for key in ("date_from", "date_to", "model", "token")):
        today = timezone.now().astimezone(dt.UTC).date()
        data = request.GET.copy()
        data.update({"date_from": str(today - dt.timedelta(days=29)), "date_to": str(today)})
    form = forms.UsageFilterForm(
        data,
        models=models,
        tokens=[t for t in tokens if t.wallet_id == wallet.pk],
        organizations=list(account_selectors.organization_list_for_user(user=user)),
    )
    cleaned = form.cleaned_data if form.is_valid() else {}
    filters = consumption.ReportFilters(
        date_from=cleaned.get("date_from"),
        date_to=cleaned.get("date_to"),
        model=cleaned.get("model") or "",
        token_id=cleaned.get("token"),
        status=cleaned.get("status") or "",
    )
    return form, filters, tokens


def _record_filters(f: consumption.ReportFilters) -> usage_selectors.UsageFilters:
    return usage_selectors.UsageFilters(
        since=_day_start(f.date_from),
        until=_day_start(f.date_to, after=True),
        model=f.model or None,
        token_id=f.token_id,
        status=f.status or None,
    )


@login_required
@require_GET
def usage_records(request: HttpRequest) -> HttpResponse:
    wallet = _usage_wallet(request)
    form, filters, tokens = _usage_filters(request, wallet)
    report = consumption.usage_report(wallet_id=wallet.pk, user=_user(request), filters=filters)
    records = (
        usage_selectors.usage_record_list(
            user=_user(request), wallet_id=wallet.pk, filters=_record_filters(filters)
        )
        .select_related("token_group")
        .order_by("-created_at", "-id")
    )
    # The count comes from the report (rollups), not from counting records.
    paginator = Paginator(records, settings.CONSOLE_PAGE_SIZE)
    paginator.count = report.total.requests
    page = paginator.get_page(request.GET.get("page"))
    names = {t.pk: t.name for t in tokens}
    models = [m.model for m in report.models]
    return render(
        request,
        "console/usage.html",
        {
            "form": form,
            "page": page,
            "rows": [(r, names.get(r.token_id or 0, "")) for r in page],
            "wallet_query": urlencode({"wallet": request.GET["wallet"]})
            if request.GET.get("wallet")
            else "",
            "report": report,
            "chart": daily_chart(
                report.daily, start=filters.date_from, end=filters.date_to, models=models
            ),
            "query": _query_without_page(request),
            "export_query": urlencode(
                {
                    k: v
                    for k, v in {
                        "wallet": request.GET.get("wallet", ""),
                        "date_from": filters.date_from or "",
                        "date_to": filters.date_to or "",
                        "model": filters.model,
                        "token": filters.token_id or "",
                        "status": filters.status,
                    }.items()
                    if v
                }
            ),
        },
    )


@login_required
@require_GET
def usage_detail(request: HttpRequest, record_id: int) -> HttpResponse:
    wallet = _usage_wallet(request)
    try:
        record = usage_selectors.usage_record_get(
            user=_user(request), wallet_id=wallet.pk, record_id=record_id
        )
    except UsageRecordNotFound as exc:
        raise Http404("No such usage record.") from exc
    return render(
        request,
        "console/usage_detail.html",
        {"record": record},
    )


@login_required
@require_GET
def usage_export(request: HttpRequest) -> StreamingHttpResponse:
    wallet = _usage_wallet(request)
    _form, filters, _tokens = _usage_filters(request, wallet)
    records = usage_selectors.usage_record_list(
        user=_user(request), wallet_id=wallet.pk, filters=_record_filters(filters)
    )
    export = UsageExport(records)
    stream = export.achunks() if isinstance(request, ASGIRequest) else export.chunks()
    response = StreamingHttpResponse(stream, content_type="text/csv; charset=utf-8")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="usage-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response


# --- Transactions -----------------------------------------------------------------------


@login_required
@require_GET
def transactions(request: HttpRequest) -> HttpResponse:
    wallet = _wallet(request)
    form = forms.LedgerFilterForm(request.GET or None)
    data = form.cleaned_data if form.is_valid() else {}
    entries = wallet_selectors.ledger_entry_list(
        wallet=wallet,
        kinds=[data["kind"]] if data.get("kind") else None,
        since=_day_start(data.get("date_from")),
        until=_day_start(data.get("date_to"), after=True),
    )
    return render(
        request,
        "console/transactions.html",
        {
            "form": form,
            "page": _page(request, entries),
            "query": _query_without_page(request),
        },
    )


# --- API tokens -------------------------------------------------------------------------


def _token_form(request: HttpRequest, data: Any = None) -> forms.TokenCreateForm:
    return forms.TokenCreateForm(
        data,
        groups=list(account_selectors.token_group_list()),
        organizations=list(account_selectors.organization_list_for_user(user=_user(request))),
    )


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    form = _token_form(request, request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                token, secret = _token_create(request, form)
            except ApplicationError as exc:
                form.add_error(None, exc.message)
                status = 400
            else:
                # Shown on the next page load only, then gone from the session.
                request.session[SECRET_SESSION_KEY] = {"id": token.pk, "secret": secret}
                return redirect("console:tokens")
        else:
            status = 400
    new_secret = request.session.pop(SECRET_SESSION_KEY, None)
    own = list(account_selectors.api_token_list_for_user(user=_user(request)))
    usage = consumption.usage_totals_by_token(
        user=_user(request), wallet_ids=sorted({t.wallet_id for t in own})
    )
    in_flight = usage_selectors.tokens_in_flight(
        token_ids=[t.pk for t in own if t.budget_micro is not None]
    )
    rows = [
        (
            token,
            account_selectors.api_token_quota_left(token=token),
            usage.get(token.pk, consumption.Sums()).requests,
            usage_selectors.token_budget_status(token=token, in_flight=in_flight.get(token.pk, 0)),
        )
        for token in own
    ]
    return render(
        request,
        "console/tokens.html",
        {"form": form, "rows": rows, "new_secret": new_secret},
        status=status,
    )


def _token_create(request: HttpRequest, form: forms.TokenCreateForm) -> tuple[ApiToken, str]:
    data = form.cleaned_data
    organization = None
    if data.get("organization"):
        organization = account_selectors.organization_get_for_user(
            user=_user(request), slug=data["organization"]
        )
        if organization is None:
            raise Http404("No such organization.")
    group = None
    if data.get("group"):
        group = next(
            (g for g in account_selectors.token_group_list() if g.pk == data["group"]), None
        )
    return account_services.api_token_create(
        user=_user(request),
        name=data["name"],
        scopes=data["scopes"],
        group=group,
        organization=organization,
        quota_credits=data.get("quota") or None,
        expires_at=form.expires_at,
        allowed_models=form.model_rules,
        allowed_ips=form.ip_rules,
        budget_period=data.get("budget_period") or "",
        budget_credits=data.get("budget") or None,
        rate_limit_rpm=data.get("rate_limit_rpm"),
        rate_limit_tpm=data.get("rate_limit_tpm"),
        log_content=bool(data.get("log_content")),
    )


def _own_token(request: HttpRequest, token_id: int) -> ApiToken:
    token = account_selectors.api_token_get_for_user(user=_user(request), token_id=token_id)
    if token is None:
        raise Http404("No such token.")
    return token


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = account_services.api_token_revoke(token=_own_token(request, token_id))
    messages.success(request, f"Token “{token.name}” was revoked. It no longer works.")
    return redirect("console:tokens")


@login_required
@require_POST
def token_rotate(request: HttpRequest, token_id: int) -> HttpResponse:
    try:
        token, secret = account_services.api_token_rotate(token=_own_token(request, token_id))
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        request.session[SECRET_SESSION_KEY] = {"id": token.pk, "secret": secret}
        messages.success(
            request, f"Token “{token.name}” has a new secret; the old one stopped working."
        )
    return redirect("console:tokens")


# --- Organizations ----------------------------------------------------------------------


@login_required
@require_GET
def organizations(request: HttpRequest) -> HttpResponse:
    orgs = account_selectors.organization_list_for_user(user=_user(request))
    if orgs.count() == 1:
        return redirect("console:organization", slug=orgs[0].slug)
    return render(request, "console/organizations.html", {"orgs": orgs})


@login_required
@require_http_methods(["GET", "POST"])
def organization(request: HttpRequest, slug: str) -> HttpResponse:
    org = account_selectors.organization_get_for_user(user=_user(request), slug=slug)
    if org is None:
        raise Http404("No such organization.")
    me = account_selectors.membership_get(organization=org, user=_user(request))
    assert me is not None
    invite_form = forms.MemberInviteForm()
    status = 200
    if request.method == "POST":
        status, invite_form = _organization_post(request, org=org)
        if status == 302:
            return redirect("console:organization", slug=org.slug)
    month = account_services.month_start(timezone.now())
    members = account_selectors.membership_list(organization=org)
    visible = members if me.can_manage else [me]
    wallet = wallet_selectors.wallet_get_for_organization(organization=org)
    return render(
        request,
        "console/organization.html",
        {
            "org": org,
            "me": me,
            "pool": wallet_selectors.wallet_summary(wallet=wallet),
            "members": [(m, m.spent_in(month)) for m in visible],
            "month": month,
            "invite_form": invite_form,
            "invitations": (
                account_selectors.invitation_list_open(organization=org) if me.can_manage else []
            ),
            "roles": Membership.Role.choices,
        },
        status=status,
    )


def _organization_post(request: HttpRequest, *, org: Any) -> tuple[int, forms.MemberInviteForm]:
    """Change a member's limit or add a member; 302 when done, else the error's status
    (the message is queued for the page) and the invite form to show again."""
    action = request.POST.get("action")
    invite_form = forms.MemberInviteForm(request.POST if action == "invite" else None)
    try:
        if action == "limit":
            limit_form = forms.MemberLimitForm(request.POST)
            if not limit_form.is_valid():
                messages.error(request, "Enter the limit as a number of credits.")
                return 400, invite_form
            membership = next(
                (
                    m
                    for m in account_selectors.membership_list(organization=org)
                    if m.pk == limit_form.cleaned_data["membership"]
                ),
                None,
            )
            if membership is None:
                raise Http404("No such member.")
            account_services.membership_update(
                membership=membership,
                actor=_user(request),
                monthly_spend_limit_credits=limit_form.cleaned_data["limit"] or None,
            )
            messages.success(request, f"The monthly limit of {membership.user.email} was saved.")
            return 302, invite_form
        if action == "invite":
            if not invite_form.is_valid():
                return 400, invite_form
            user = account_selectors.user_get_by_email(email=invite_form.cleaned_data["email"])
            if user is None:
                invitation, _ = account_services.invitation_create(
                    organization=org,
                    email=invite_form.cleaned_data["email"],
                    actor=_user(request),
                    role=invite_form.cleaned_data["role"],
                    monthly_spend_limit_credits=invite_form.cleaned_data["limit"] or None,
                )
                messages.success(
                    request,
                    f"There is no account for {invitation.email} yet: we emailed an invitation "
                    f"to join, valid until {invitation.expires_at:%Y-%m-%d} (UTC).",
                )
                return 302, forms.MemberInviteForm()
            account_services.membership_add(
                organization=org,
                user=user,
                actor=_user(request),
                role=invite_form.cleaned_data["role"],
                monthly_spend_limit_credits=invite_form.cleaned_data["limit"] or None,
            )
            messages.success(request, f"{user.email} is now a member.")
            return 302, forms.MemberInviteForm()
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return exc.status_code, invite_form
    return 400, invite_form


# --- Settings ---------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def settings_page(request: HttpRequest) -> HttpResponse:
    wallet = _wallet(request)
    threshold = wallet_selectors.wallet_low_balance_threshold(wallet=wallet)
    user = _user(request)
    initial = {
        "threshold": money.format_credits(threshold).replace(",", ""),
        "notification_email": user.notification_email,
    }
    form = forms.SettingsForm(request.POST or None, initial=initial)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                micro = money.credits_to_micro(form.cleaned_data["threshold"], allow_zero=True)
                wallet_services.wallet_set_low_balance_threshold(
                    wallet=wallet, threshold_micro=micro
                )
                account_services.user_update_notifications(
                    user=user,
                    notification_email=form.cleaned_data["notification_email"],
                    alert_webhook_url=user.alert_webhook_url,
                )
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, "Your settings were saved.")
                return redirect("console:settings")
    return render(request, "console/settings.html", {"form": form}, status=status)
