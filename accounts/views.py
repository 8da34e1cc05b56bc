from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from accounts import services
from accounts.errors import EmailTaken, InvitationUnusable
from accounts.forms import EmailAuthenticationForm, SignupForm
from accounts.models import User
from config.errors import ApplicationError, LimiterUnavailable
from config.ratelimit import Window
from config.redirects import safe_next
from referrals import views as referral_views


def client_ip(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def login_window() -> Window:
    return Window(
        "login-failure",
        limit=settings.LOGIN_FAILURE_LIMIT,
        seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS,
    )


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = services.user_create(
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
                full_name=form.cleaned_data["full_name"],
                country=form.cleaned_data["country"],
            )
        except EmailTaken:
            form.add_error("email", "An account with this email address already exists.")
        else:
            referral_views.signup_referral_record(request, user)
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, "Welcome! Your account is ready.")
            return referral_views.forget_invite(redirect(safe_next(request, reverse("home"))))
    return render(request, "registration/signup.html", {"form": form})


class LoginView(auth_views.LoginView):
    """Django's log-in, with failed attempts limited per client address and per email so
    passwords cannot be guessed at speed."""

    form_class = EmailAuthenticationForm
    redirect_authenticated_user = True

    def _subjects(self) -> list[str]:
        email = (self.request.POST.get("username") or "").strip().lower()
        return [f"ip:{client_ip(self.request)}", f"email:{email}"]

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        window = login_window()
        try:
            blocked = [s for s in self._subjects() if window.exceeded(s)]
        except LimiterUnavailable as exc:
            # Without the limit, passwords could be guessed at speed: refuse for now.
            return self._refuse(exc.message, status=exc.status_code)
        if blocked:
            response = self._refuse(
                "Too many failed log-in attempts. Please wait a few minutes and try again.",
                status=429,
            )
            response["Retry-After"] = str(window.retry_after(blocked[0]))
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        window = login_window()
        try:
            for subject in self._subjects():
                window.hit(subject)
        except LimiterUnavailable as exc:
            return self._refuse(exc.message, status=exc.status_code)
        return super().form_invalid(form)

    def _refuse(self, message: str, *, status: int) -> HttpResponse:
        form = self.get_form()
        form.errors.clear()
        form.add_error(None, message)
        return self.render_to_response(self.get_context_data(form=form), status=status)


class LogoutView(auth_views.LogoutView):
    pass


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@require_http_methods(["GET", "POST"])
def invitation(request: HttpRequest, secret: str) -> HttpResponse:
    """An emailed invitation to join an organization: shown to anyone with the link;
    accepted (POST) by the signed-in account of the invited address."""
    try:
        invite = services.invitation_get(secret=secret)
    except ApplicationError as exc:
        return render(request, "registration/invitation.html", {"error": exc.message}, status=404)
    status, error = 200, ""
    if request.method == "POST":
        if not request.user.is_authenticated:
            return redirect(f"{reverse('accounts:login')}?next={request.path}")
        try:
            membership = services.invitation_accept(secret=secret, user=cast(User, request.user))
        except ApplicationError as exc:
            status, error = exc.status_code, exc.message
        else:
            messages.success(request, f"You joined {membership.organization.name}.")
            return redirect("console:organization", slug=membership.organization.slug)
    usable = invite.accepted_at is None and invite.expires_at > timezone.now()
    if not usable and not error:
        status, error = 410, InvitationUnusable.default_message
    return render(
        request,
        "registration/invitation.html",
        {"invitation": invite, "error": error, "usable": usable},
        status=status,
    )
