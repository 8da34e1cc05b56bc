from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from tests.factories import UserFactory
from wallet.models import Wallet

pytestmark = pytest.mark.django_db


def test_sign_up_creates_the_user_and_wallet_and_logs_in(client: Client) -> None:
    response = client.post(
        reverse("accounts:signup"),
        {
            "email": "New.Person@Example.com",
            "password": "a-long-unusual-passphrase",
            "full_name": "New Person",
            "country": "de",
        },
    )
    assert response.status_code == 302
    user = User.objects.get(email="new.person@example.com")
    assert user.country == "DE"
    assert Wallet.objects.get(user=user).balance == 0
    home = client.get("/")
    assert home.status_code == 200
    assert b"0.00 credits" in home.content


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"email": "not-an-email", "password": "a-long-unusual-passphrase"}, "email"),
        ({"email": "x@example.com", "password": "123"}, "password"),
        (
            {"email": "x@example.com", "password": "a-long-unusual-passphrase", "country": "USA"},
            "country",
        ),
    ],
)
def test_sign_up_refuses_bad_input(client: Client, data: dict[str, str], field: str) -> None:
    response = client.post(reverse("accounts:signup"), data)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not User.objects.exists()


def test_sign_up_with_a_taken_email_in_other_case_is_refused(client: Client) -> None:
    UserFactory(email="taken@example.com")
    response = client.post(
        reverse("accounts:signup"),
        {"email": "TAKEN@example.com", "password": "a-long-unusual-passphrase"},
    )
    assert response.status_code == 200
    assert "already exists" in str(response.context["form"].errors["email"])
    assert User.objects.count() == 1


def test_log_in_and_out(client: Client) -> None:
    UserFactory(email="me@example.com", password="a-long-unusual-passphrase")
    response = client.post(
        reverse("accounts:login"),
        {"username": "ME@example.com", "password": "a-long-unusual-passphrase"},
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post(reverse("accounts:logout"))
    assert client.get("/").status_code == 302


def test_console_requires_log_in(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert reverse("accounts:login") in response["Location"]


def test_failed_log_ins_are_rate_limited(client: Client, settings) -> None:
    settings.LOGIN_FAILURE_LIMIT = 3
    UserFactory(email="me@example.com", password="a-long-unusual-passphrase")
    for _ in range(3):
        response = client.post(
            reverse("accounts:login"), {"username": "me@example.com", "password": "wrong"}
        )
        assert response.status_code == 200
    blocked = client.post(
        reverse("accounts:login"),
        {"username": "me@example.com", "password": "a-long-unusual-passphrase"},
    )
    assert blocked.status_code == 429
    assert int(blocked["Retry-After"]) > 0
    assert b"Too many failed" in blocked.content
    assert "_auth_user_id" not in client.session


def test_login_form_carries_csrf(client: Client) -> None:
    csrf_client = Client(enforce_csrf_checks=True)
    UserFactory(email="me@example.com", password="a-long-unusual-passphrase")
    response = csrf_client.post(
        reverse("accounts:login"),
        {"username": "me@example.com", "password": "a-long-unusual-passphrase"},
    )
    assert response.status_code == 403
    page = client.get(reverse("accounts:login"))
    assert b"csrfmiddlewaretoken" in page.content


def test_healthz(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_a_page_message_waits_through_api_calls_for_the_next_page(client: Client) -> None:
    """API responses neither show nor consume the messages queued for the console's pages."""
    client.post(
        reverse("accounts:signup"),
        {"email": "m@example.com", "password": "a-long-unusual-passphrase", "full_name": "M"},
    )
    api = client.get("/api/v1/wallet")
    assert api.status_code == 200
    assert b"Welcome" not in api.content
    assert b"Welcome! Your account is ready." in client.get("/").content
    assert b"Welcome! Your account is ready." not in client.get("/").content


@pytest.mark.parametrize(
    ("next_url", "lands_on"),
    [("/console/tokens/", "/console/tokens/"), ("https://evil.example/", "/"), ("", "/")],
)
def test_sign_up_returns_only_to_this_site(client: Client, next_url: str, lands_on: str) -> None:
    response = client.post(
        reverse("accounts:signup"),
        {"email": "n@example.com", "password": "a-long-unusual-passphrase", "next": next_url},
    )
    assert response.status_code == 302
    assert response["Location"] == lands_on
