"""Console pages through Django's test client: scoping to the signed-in user, errors in
words, and the forms' effects."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiToken, Invitation, Membership, User
from tests.console.conftest import browser
from tests.console.test_rollups import record
from tests.factories import OrganizationFactory, UserFactory
from tests.helpers import assert_ledger_ok, credit, micro
from tests.redemption.conftest import make_batch
from tests.usage.conftest import make_token
from usage import rollups
from wallet.models import Wallet


@pytest.fixture
def used(user: User, prices: Any) -> dict[str, Any]:
    credit(Wallet.objects.get(user=user), "100")
    token, _ = make_token(user)
    chat = record(token, days_ago=0)
    reasoner = record(token, days_ago=2, model="test-reasoner")
    return {"token": token, "chat": chat, "reasoner": reasoner}


def test_the_wallet_page_shows_consumption_and_the_warning_under_the_threshold(user, used) -> None:
    page = browser(user).get("/").content.decode()
    assert 'data-testid="requests">2<' in page
    assert "Low balance." in page  # 100 credits < 1,000
    Wallet.objects.filter(user=user).update(low_balance_threshold_micro=micro("50"))
    assert "Low balance." not in browser(user).get("/").content.decode()


def test_another_users_objects_are_not_found(user, used, other_user) -> None:
    client = browser(other_user)
    assert client.get(f"/console/usage/{used['chat'].pk}/").status_code == 404
    assert client.post(f"/console/tokens/{used['token'].pk}/revoke/").status_code == 404
    assert client.post(f"/console/tokens/{used['token'].pk}/rotate/").status_code == 404
    org = OrganizationFactory(owner=user)
    assert client.get(f"/console/organizations/{org.slug}/").status_code == 404
    assert b"test-chat" not in client.get("/console/usage/").content
    assert ApiToken.objects.get(pk=used["token"].pk).status == ApiToken.Status.ACTIVE
    # The owner does see them.
    assert browser(user).get(f"/console/usage/{used['chat'].pk}/").status_code == 200


def test_pages_need_a_login() -> None:
    from django.test import Client

    for path in ("/", "/console/usage/", "/console/tokens/", "/console/usage/export.csv"):
        response = Client().get(path)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_usage_filters_narrow_the_list_the_summary_and_the_csv(user, used) -> None:
    rollups.usage_rollup_catch_up()
    client = browser(user)
    everything = client.get("/console/usage/").content.decode()
    assert everything.count('data-testid="usage-row"') == 2
    only = client.get("/console/usage/", {"model": "test-reasoner"})
    assert only.content.decode().count('data-testid="usage-row"') == 1
    assert only.context["page"].paginator.count == 1
    export = client.get("/console/usage/export.csv", {"model": "test-reasoner"})
    assert export["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert [r["model"] for r in rows] == ["test-reasoner"]
    bad = client.get("/console/usage/", {"date_from": "2026-05-02", "date_to": "2026-05-01"})
    assert "The end date is before the start date." in bad.content.decode()


def test_a_usage_row_shows_every_factor_of_its_price(user, used) -> None:
    page = browser(user).get(f"/console/usage/{used['chat'].pk}/").content.decode()
    for factor in ("Uncached input tokens", "Markup", "Credits per USD", "Tier rate", "x 1 tier"):
        assert factor in page
    # The same breakdown as the API's: price version, rounding and the filled-in formula.
    from django.utils.html import escape

    from usage.api import breakdown_payload

    api = breakdown_payload(used["chat"])
    assert f"#{api['price_id']} (test-chat)" in page
    assert escape(api["rounding"]) in page
    assert escape(api["formula"]) in page
    assert f"= {api['cost_micro']} µcr" in api["formula"]


def test_a_token_with_a_bad_ip_rule_is_refused_in_words(user) -> None:
    response = browser(user).post(
        "/console/tokens/", {"name": "ci", "scopes": ["inference"], "ips": "not-an-ip"}
    )
    assert response.status_code == 400
    assert "errorlist" in response.content.decode() or "alert bad" in response.content.decode()
    assert not ApiToken.objects.filter(user=user).exists()


def test_rotating_shows_the_new_secret_once(user, used) -> None:
    client = browser(user)
    client.post(f"/console/tokens/{used['token'].pk}/rotate/")
    page = client.get("/console/tokens/").content.decode()
    assert 'data-testid="new-secret"' in page
    assert 'data-testid="new-secret"' not in client.get("/console/tokens/").content.decode()


def test_settings_change_the_threshold_and_email(user) -> None:
    client = browser(user)
    response = client.post(
        "/console/settings/", {"threshold": "0", "notification_email": "Alerts@Example.com"}
    )
    assert response.status_code == 302
    wallet = Wallet.objects.get(user=user)
    assert wallet.low_balance_threshold_micro == 0
    assert User.objects.get(pk=user.pk).notification_email == "alerts@example.com"
    assert "Low balance." not in client.get("/").content.decode()
    bad = client.post("/console/settings/", {"threshold": "1.0000001", "notification_email": ""})
    assert bad.status_code == 400 and "more than six decimal places" in bad.content.decode()


def test_owners_set_limits_and_members_see_only_their_spend(user) -> None:
    org = OrganizationFactory(owner=user)
    member = UserFactory()
    account_services.membership_add(organization=org, user=member, actor=user)
    mine = Membership.objects.get(organization=org, user=member)
    url = f"/console/organizations/{org.slug}/"
    owner_page = browser(user).get(url).content.decode()
    assert member.email in owner_page and "Add a member" in owner_page
    done = browser(user).post(url, {"action": "limit", "membership": mine.pk, "limit": "25"})
    assert done.status_code == 302
    assert Membership.objects.get(pk=mine.pk).monthly_spend_limit_micro == micro("25")
    member_page = browser(member).get(url).content.decode()
    assert user.email not in member_page and "Add a member" not in member_page
    refused = browser(member).post(url, {"action": "limit", "membership": mine.pk, "limit": ""})
    assert refused.status_code == 403
    assert "Only owners and admins" in refused.content.decode()
    assert Membership.objects.get(pk=mine.pk).monthly_spend_limit_micro == micro("25")
    unknown = browser(user).post(
        url,
        {"action": "invite", "email": "Nobody@Example.com", "role": "member", "limit": "5"},
        follow=True,
    )
    assert "we emailed an invitation" in unknown.content.decode()
    invitation = Invitation.objects.get(organization=org)
    assert (invitation.email, invitation.monthly_spend_limit_micro) == (
        "nobody@example.com",
        micro("5"),
    )
    assert "nobody@example.com · member" in browser(user).get(url).content.decode()
    # A plain member cannot invite.
    refused_invite = browser(member).post(
        url, {"action": "invite", "email": "other@example.com", "role": "member"}
    )
    assert refused_invite.status_code == 403
    assert Invitation.objects.count() == 1


def test_a_bad_top_up_amount_is_explained(user) -> None:
    client = browser(user)
    preview = client.get("/", {"amount": "1"}).content.decode()
    assert "alert bad" in preview
    response = client.post(
        "/console/topup/",
        {"package": "", "amount": "abc", "payment_method": "card", "idempotency_key": "k1"},
        follow=True,
    )
    assert "not a number" in response.content.decode()


def test_redeeming_from_the_wallet_page_comes_back_to_it(user) -> None:
    code = make_batch(credits_micro=micro("5")).codes[0]
    client = browser(user)
    response = client.post("/redeem/", {"code": code, "next": "/"})
    assert response.status_code == 302 and response["Location"] == "/"
    outside = make_batch(credits_micro=micro("5")).codes[0]
    response = client.post("/redeem/", {"code": outside, "next": "https://evil.example/"})
    assert response["Location"] == "/redeem/"
    assert_ledger_ok(Wallet.objects.get(user=user))


def test_a_members_usage_on_an_organization_pool_is_listed_under_that_wallet(
    user, prices, other_user
) -> None:
    org = OrganizationFactory(owner=user)
    credit(Wallet.objects.get(organization=org), "50")
    token, _ = make_token(user, organization=org)
    pooled = record(token, days_ago=0)
    client = browser(user)
    assert b"test-chat" not in client.get("/console/usage/").content  # not the own wallet
    page = client.get("/console/usage/", {"wallet": org.slug}).content.decode()
    assert page.count('data-testid="usage-row"') == 1
    detail = client.get(f"/console/usage/{pooled.pk}/", {"wallet": org.slug})
    assert detail.status_code == 200
    assert browser(other_user).get("/console/usage/", {"wallet": org.slug}).status_code == 404
    export = client.get("/console/usage/export.csv", {"wallet": org.slug})
    assert pooled.request_id in b"".join(export.streaming_content).decode()


def test_a_form_without_its_csrf_token_is_refused_in_words(user) -> None:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post("/console/settings/", {"threshold": "5"})
    assert response.status_code == 403
    assert "This form expired or was sent from another page" in response.content.decode()
    assert Wallet.objects.get(user=user).low_balance_threshold_micro is None


def test_the_tokens_page_shows_requests_used_and_quota_left_per_token(user, prices) -> None:
    credit(Wallet.objects.get(user=user), "100")
    token, _ = make_token(user, quota_credits="5")
    for days_ago in (3, 0):
        record(token, days_ago=days_ago)
    rollups.usage_rollup_catch_up()  # one day from the rollups, today live
    response = browser(user).get("/console/tokens/")
    token.refresh_from_db()
    (row,) = response.context["rows"]
    assert row == (token, micro("5") - token.used_micro, 2, None)  # None: no periodic budget
    assert 'data-testid="token-requests">2<' in response.content.decode()


def test_a_bank_transfer_order_shows_how_to_pay(user) -> None:
    client = browser(user)
    response = client.post(
        "/console/topup/",
        {"package": "", "amount": "50", "payment_method": "bank_transfer", "idempotency_key": "b1"},
        follow=True,
    )
    page = response.content.decode()
    order = user.topup_orders.get()
    assert 'data-testid="instructions"' in page and order.order_no in page
    assert order.payment_method == "bank_transfer" and order.status == "pending"
    bills = client.get("/console/bills/", {"payment_method": "card"}).content.decode()
    assert order.order_no not in bills
    assert order.order_no in client.get("/console/bills/").content.decode()


def test_a_token_with_a_budget_and_limits_shows_used_limit_and_reset(user) -> None:
    client = browser(user)
    response = client.post(
        "/console/tokens/",
        {
            "name": "capped",
            "scopes": ["inference"],
            "budget_period": "daily",
            "budget": "5",
            "rate_limit_rpm": "60",
            "rate_limit_tpm": "10000",
            "log_content": "on",
        },
    )
    assert response.status_code == 302
    token = ApiToken.objects.get(user=user, name="capped")
    assert (token.budget_period, token.budget_micro) == ("daily", micro("5"))
    assert (token.rate_limit_rpm, token.rate_limit_tpm, token.log_content) == (60, 10000, True)
    page = client.get("/console/tokens/").content.decode()
    import re

    cell = re.search(r'data-testid="token-budget">(.*?)</td>', page, re.S)
    assert cell is not None
    text = re.sub(r"<[^>]+>", "", cell.group(1))
    tomorrow = (timezone.now() + dt.timedelta(days=1)).strftime("%Y-%m-%d")
    assert text.startswith("0.00 of 5.00 daily; resets " + tomorrow + " 00:00 UTC"), text
    assert "60 req/min" in page and "10000 tokens/min" in page


def test_a_budget_needs_a_period_and_an_amount(user) -> None:
    response = browser(user).post(
        "/console/tokens/", {"name": "half", "scopes": ["inference"], "budget": "5"}
    )
    assert response.status_code == 400
    assert "A budget needs both a period and an amount." in response.content.decode()
    assert not ApiToken.objects.filter(user=user).exists()


def test_the_tokens_page_reads_every_budget_in_flight_at_once(user, prices) -> None:  # type: ignore[no-untyped-def]
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from usage import services

    credit(Wallet.objects.get(user=user), "100")
    client = browser(user)

    def queries_and_cells() -> tuple[int, list[str]]:
        with CaptureQueriesContext(connection) as captured:
            page = client.get("/console/tokens/").content.decode()
        import re

        cells = re.findall(r'data-testid="token-budget">(.*?)</td>', page, re.S)
        return len(captured), [re.sub(r"<[^>]+>|\s+", " ", c).strip() for c in cells]

    make_token(user, budget_period="daily", budget_credits="5")
    one, _ = queries_and_cells()
    for index in range(4):
        make_token(user, budget_period="monthly", budget_credits=str(index + 1))
    five, cells = queries_and_cells()
    assert five == one  # not one in-flight query per budgeted token

    loaded = account_services.api_token_authenticate(
        secret=make_token(user, budget_period="daily", budget_credits="5")[1], client_ip="127.0.0.1"
    )
    held = services.authorization_create(
        token=loaded, model="test-chat", input_tokens=1000, max_tokens=100, request_id="r"
    ).authorization.amount_micro
    _, cells = queries_and_cells()
    from wallet.money import format_credits

    flying = [cell for cell in cells if "in flight" in cell]
    assert len(flying) == 1  # only that token's
    assert f"of 5.00 daily, {format_credits(held)} in flight;" in flying[0]
