"""``POST/GET /api/v1/redemptions`` and the console's ``/redeem/`` page."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from redemption import services
from redemption.models import Redemption
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, ledger_state, micro
from tests.redemption.conftest import make_batch, redeem
from wallet.models import Wallet

pytestmark = pytest.mark.django_db

URL = "/api/v1/redemptions"


def logged_in(user, **kwargs) -> Client:  # type: ignore[no-untyped-def]
    client = Client(**kwargs)
    client.force_login(user)
    return client


def post(client: Client, code: str, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(URL, {"code": code}, content_type="application/json", **headers)


def test_redeem_through_the_api(user) -> None:
    [code] = make_batch(credits_micro=micro("12.5"), credit_validity_days=10).codes
    client = logged_in(user)
    response = post(client, code.lower(), HTTP_IDEMPOTENCY_KEY="first")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["credits_micro"] == micro("12.5") and body["credits"] == "12.5"
    assert body["code"] == "••••-••••-••••-" + code[-4:]
    assert body["offer"] == "Spring promo"
    assert body["balance_after_micro"] == micro("12.5")
    assert body["expires_at"] is not None
    replay = post(client, code, HTTP_IDEMPOTENCY_KEY="first")
    assert replay.status_code == 200
    assert replay.json()["id"] == body["id"]
    assert Wallet.objects.get(user=user).balance == micro("12.5")
    assert_ledger_ok()


@pytest.mark.parametrize(
    ("setup", "status", "code"),
    [
        ("missing", 404, "code_not_found"),
        ("expired", 410, "code_expired"),
        ("disabled", 410, "code_disabled"),
        ("exhausted", 409, "code_exhausted"),
        ("already", 409, "already_redeemed"),
        ("ineligible", 403, "not_eligible"),
    ],
)
def test_api_refusals_have_stable_codes_and_change_nothing(user, setup, status, code) -> None:
    generated = make_batch(
        allowed_countries="DE" if setup == "ineligible" else "",
        codes_expire_at=timezone.now() + dt.timedelta(seconds=1) if setup == "expired" else None,
        uses_per_code=2 if setup == "already" else 1,
    )
    typed = generated.codes[0]
    if setup == "missing":
        typed = "ZZZZ-ZZZZ-ZZZZ-ZZZZ"
    elif setup == "expired":
        type(generated.batch).objects.filter(pk=generated.batch.pk).update(
            codes_expire_at=timezone.now() - dt.timedelta(seconds=1)
        )
    elif setup == "disabled":
        services.batch_set_status(batch=generated.batch, status="disabled")
    elif setup == "exhausted":
        redeem(UserFactory(), typed)
    elif setup == "already":
        redeem(user, typed)
    before = ledger_state(Wallet.objects.get(user=user))
    redemptions = Redemption.objects.count()
    response = post(logged_in(user), typed)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if code == "not_eligible":
        assert error["detail"]["rule"] == "country"
        assert "DE" in error["message"]
    assert ledger_state(Wallet.objects.get(user=user)) == before
    assert Redemption.objects.count() == redemptions


def test_api_input_errors(user) -> None:
    client = logged_in(user)
    empty = post(client, "")
    assert (empty.status_code, empty.json()["error"]["code"]) == (400, "invalid_input")
    missing = client.post(URL, {}, content_type="application/json")
    assert missing.json()["error"]["code"] == "invalid_input"
    anonymous = Client().post(URL, {"code": "X"}, content_type="application/json")
    assert anonymous.status_code in (401, 403)
    assert anonymous.json()["error"]["code"] == "not_authenticated"


def test_api_rate_limit_answers_429_with_retry_after(user, settings) -> None:
    settings.REDEMPTION_FAILURE_LIMIT = 2
    client = logged_in(user)
    for _ in range(2):
        assert post(client, "ZZZZ-ZZZZ-ZZZZ-ZZZZ").status_code == 404
    [good] = make_batch().codes
    limited = post(client, good)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited["Retry-After"]) <= settings.REDEMPTION_FAILURE_WINDOW_SECONDS
    assert Wallet.objects.get(user=user).balance == 0


def test_api_counts_failures_per_address(settings) -> None:
    settings.REDEMPTION_FAILURE_LIMIT = 2
    for _ in range(2):
        response = post(logged_in(UserFactory()), "ZZZZ-ZZZZ-ZZZZ-ZZZZ", REMOTE_ADDR="203.0.113.9")
        assert response.status_code == 404
    third = post(logged_in(UserFactory()), "ZZZZ-ZZZZ-ZZZZ-ZZZZ", REMOTE_ADDR="203.0.113.9")
    assert third.status_code == 429
    elsewhere = post(logged_in(UserFactory()), "ZZZZ-ZZZZ-ZZZZ-ZZZZ", REMOTE_ADDR="203.0.113.10")
    assert elsewhere.status_code == 404


def test_the_list_shows_only_your_own_redemptions(user, other_user) -> None:
    mine, theirs = make_batch(code_count=2).codes
    redeem(user, mine)
    redeem(other_user, theirs)
    body = logged_in(user).get(URL).json()
    assert body["count"] == 1
    [row] = body["results"]
    assert row["code"].endswith(mine[-4:])
    assert theirs[-4:] not in str(body)
    assert logged_in(UserFactory()).get(URL).json()["count"] == 0


# --- Console page ---------------------------------------------------------------------------------


def test_the_console_page_redeems_and_says_so(user) -> None:
    [code] = make_batch(credits_micro=micro("3")).codes
    client = logged_in(user)
    page = client.get("/redeem/")
    assert page.status_code == 200
    assert b"csrfmiddlewaretoken" in page.content
    response = client.post("/redeem/", {"code": code}, follow=True)
    assert response.redirect_chain == [("/redeem/", 302)]
    assert b"Code redeemed: 3.00 credits were added to your wallet." in response.content
    assert b"Spring promo" in response.content  # the history below the form
    assert Wallet.objects.get(user=user).balance == micro("3")


def test_the_console_page_shows_errors_in_words(user, other_user, settings) -> None:
    settings.REDEMPTION_FAILURE_LIMIT = 2
    [code] = make_batch().codes
    redeem(other_user, code)
    client = logged_in(user)
    exhausted = client.post("/redeem/", {"code": code})
    assert exhausted.status_code == 409
    assert b"already been used as often as it allows" in exhausted.content
    missing = client.post("/redeem/", {"code": "nope"})
    assert missing.status_code == 404
    assert b"This code does not exist" in missing.content
    limited = client.post("/redeem/", {"code": code})
    assert limited.status_code == 429
    assert b"Too many failed attempts" in limited.content
    assert int(limited["Retry-After"]) >= 1
    assert client.post("/redeem/", {"code": ""}).status_code == 400
    assert Wallet.objects.get(user=user).balance == 0


def test_the_console_page_needs_a_log_in_and_a_csrf_token(user) -> None:
    [code] = make_batch().codes
    assert Client().get("/redeem/").status_code == 302
    strict = logged_in(user, enforce_csrf_checks=True)
    assert strict.post("/redeem/", {"code": code}).status_code == 403
    assert Wallet.objects.get(user=user).balance == 0
