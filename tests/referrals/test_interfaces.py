"""``GET /api/v1/referrals``, ``POST /api/v1/referrals/transfer``, the plain page, and the
reward-rule admin."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client

from referrals.models import ReferralAccount, ReferralLedgerEntry, RewardRule
from tests.factories import UserFactory
from tests.helpers import micro
from tests.referrals.conftest import account, invite, make_rule

pytestmark = pytest.mark.django_db


def logged_in(user, **kwargs) -> Client:  # type: ignore[no-untyped-def]
    client = Client(**kwargs)
    client.force_login(user)
    return client


def transfer(client: Client, key: str | None = "k1", **body: str):  # type: ignore[no-untyped-def]
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(
        "/api/v1/referrals/transfer", body, content_type="application/json", **headers
    )


def test_the_summary_shows_code_link_proceeds_revenue_and_invitees(inviter, rule, pay) -> None:
    friend = invite(inviter, email="dana@example.org")
    invite(inviter)
    pay(friend, "250")
    body = logged_in(inviter).get("/api/v1/referrals").json()
    code = account(inviter).code
    assert body["code"] == code
    assert body["link"] == f"https://credits.test/r/{code}"
    assert (body["proceeds_micro"], body["proceeds"]) == (micro("25"), "25")
    assert (body["total_revenue_micro"], body["total_revenue"]) == (micro("25"), "25")
    assert (body["invited_count"], body["debt_micro"]) == (2, 0)
    assert body["minimum_transfer_micro"] == micro("10")
    [reward] = body["recent_rewards"]
    assert (reward["kind"], reward["amount_micro"], reward["invitee"]) == (
        "reward",
        micro("25"),
        "d***@example.org",
    )


def test_the_summary_shows_only_your_own_account(inviter, rule, pay) -> None:
    pay(invite(inviter), "100")
    stranger = UserFactory()
    # Query parameters naming someone else are ignored: the caller is the only subject.
    inviter_account = account(inviter)
    body = (
        logged_in(stranger)
        .get("/api/v1/referrals", {"user": inviter.pk, "code": inviter_account.code})
        .json()
    )
    assert body["code"] != inviter_account.code
    assert (body["proceeds_micro"], body["invited_count"], body["recent_rewards"]) == (0, 0, [])
    assert inviter.email not in str(body)
    anonymous = Client().get("/api/v1/referrals")
    assert anonymous.json()["error"]["code"] == "not_authenticated"


def test_transfer_through_the_api_once_per_key(inviter, rule, pay) -> None:
    pay(invite(inviter), "300")
    client = logged_in(inviter)
    first = transfer(client, amount="12.5")
    assert first.status_code == 201, first.content
    body = first.json()
    assert (body["transferred_micro"], body["transferred"]) == (micro("12.5"), "12.5")
    assert body["proceeds_after_micro"] == micro("17.5")
    assert body["wallet_balance_after_micro"] == micro("12.5")
    again = transfer(client, amount="12.5")
    assert again.status_code == 200 and again.json()["wallet_entry_id"] == body["wallet_entry_id"]
    assert account(inviter).balance == micro("17.5")
    conflict = transfer(client, amount="13")
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (409, "idempotency_conflict")


@pytest.mark.parametrize(
    ("key", "body", "status", "code"),
    [
        (None, {"amount": "10"}, 400, "idempotency_key_required"),
        ("k", {"amount": "9.99"}, 400, "transfer_below_minimum"),
        ("k", {"amount": "30.01"}, 409, "insufficient_reward_balance"),
        ("k", {"amount": "ten"}, 400, "invalid_amount"),
        ("k", {"amount": "1.0000001"}, 400, "invalid_amount"),
    ],
)
def test_transfer_refusals(inviter, rule, pay, key, body, status, code) -> None:
    pay(invite(inviter), "300")
    response = transfer(logged_in(inviter), key, **body)
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert account(inviter).balance == micro("30")
    assert not ReferralLedgerEntry.objects.filter(kind="transfer").exists()


def test_the_page_shows_the_figures_and_moves_the_balance(inviter, rule, pay) -> None:
    pay(invite(inviter), "150")
    client = logged_in(inviter)
    page = client.get("/referrals/")
    assert page.status_code == 200
    assert account(inviter).code.encode() in page.content
    assert b"15.00" in page.content
    key = page.context["form"]["idempotency_key"].value()
    too_little = client.post("/referrals/", {"amount": "1", "idempotency_key": key})
    assert too_little.status_code == 400
    assert b"The smallest transfer is 10.00 credits." in too_little.content
    moved = client.post("/referrals/", {"amount": "", "idempotency_key": key}, follow=True)
    assert b"Moved 15.00 credits to your wallet." in moved.content
    client.post("/referrals/", {"amount": "", "idempotency_key": key})  # a double submit
    assert account(inviter).balance == 0
    assert ReferralLedgerEntry.objects.filter(kind="transfer").count() == 1
    strict = logged_in(inviter, enforce_csrf_checks=True)
    assert strict.post("/referrals/", {"idempotency_key": "x"}).status_code == 403
    assert Client().get("/referrals/").status_code == 302


# --- Reward rules in the admin ------------------------------------------------------------------


@pytest.fixture
def admin_client() -> Client:
    return logged_in(UserFactory(is_staff=True, is_superuser=True))


def test_staff_create_a_rule_in_credits_and_its_terms_are_then_fixed(admin_client) -> None:
    response = admin_client.post(
        "/admin/referrals/rewardrule/add/",
        {
            "name": "Five on first",
            "basis": "fixed_first",
            "fixed_credits": "5",
            "signup_credits": "2.5",
            "signup_credits_days": "30",
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    rule = RewardRule.objects.get()
    assert (rule.fixed_micro, rule.signup_credits_micro, rule.is_active) == (
        micro("5"),
        micro("2.5"),
        True,
    )
    change = admin_client.get(f"/admin/referrals/rewardrule/{rule.pk}/change/")
    assert b'name="fixed_credits"' not in change.content
    assert b'name="basis"' not in change.content
    admin_client.post(
        f"/admin/referrals/rewardrule/{rule.pk}/change/", {"name": "Renamed", "is_active": "on"}
    )
    rule.refresh_from_db()
    assert (rule.name, rule.fixed_micro, rule.basis) == ("Renamed", micro("5"), "fixed_first")


def test_rules_missing_their_terms_are_refused(admin_client) -> None:
    for data in (
        {"name": "x", "basis": "percent_first"},
        {"name": "x", "basis": "percent_window", "percent": "5"},
        {"name": "x", "basis": "fixed_first"},
        {"name": "x", "basis": "percent_first", "percent": "101"},
    ):
        response = admin_client.post("/admin/referrals/rewardrule/add/", data)
        assert response.status_code == 200, data
    assert not RewardRule.objects.exists()


def test_one_active_rule_at_a_time(admin_client) -> None:
    first = make_rule()
    second = RewardRule.objects.create(name="second", basis="percent_first", percent=Decimal("20"))
    refused = admin_client.post(
        f"/admin/referrals/rewardrule/{second.pk}/change/", {"name": "second", "is_active": "on"}
    )
    assert refused.status_code == 200 and b"deactivate it first" in refused.content
    admin_client.post(
        "/admin/referrals/rewardrule/",
        {"action": "activate", "_selected_action": [second.pk]},
    )
    assert list(RewardRule.objects.filter(is_active=True)) == [second]
    first.refresh_from_db()
    assert not first.is_active
    admin_client.post(
        "/admin/referrals/rewardrule/",
        {"action": "deactivate", "_selected_action": [second.pk]},
    )
    assert not RewardRule.objects.filter(is_active=True).exists()


def test_reward_accounts_are_read_only_in_the_admin(admin_client, inviter, rule, pay) -> None:
    pay(invite(inviter), "100")
    mine = ReferralAccount.objects.get(user=inviter)
    page = admin_client.get(f"/admin/referrals/referralaccount/{mine.pk}/change/")
    assert page.status_code == 200
    assert b"10.00" in page.content
    assert admin_client.get("/admin/referrals/referralaccount/add/").status_code == 403


def test_the_openapi_schema_documents_redemptions_and_referrals(user) -> None:
    schema = logged_in(user).get("/api/schema/", {"format": "json"}).json()
    for path in ("/api/v1/redemptions", "/api/v1/referrals", "/api/v1/referrals/transfer"):
        assert path in schema["paths"], path
    transfer_op = schema["paths"]["/api/v1/referrals/transfer"]["post"]
    [header] = [p for p in transfer_op["parameters"] if p["name"] == "Idempotency-Key"]
    assert header["required"] is True
    page = schema["components"]["schemas"]["RedemptionPage"]["properties"]
    assert {"count", "results"} <= set(page)
    assert (
        "recent_rewards" in schema["components"]["schemas"]["ReferralSummaryOutput"]["properties"]
    )
