"""The console in a real browser: sign-up, redemption, a card top-up through the (fake)
hosted checkout and its webhook, a token's one-time secret, a metered call in the usage
records and its CSV, and one customer's pages closed to another."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from accounts import tokens as token_hashing
from accounts.models import ApiToken
from billing.models import TopUpOrder
from tests.browser.conftest import PASSWORD, Shots, log_in, make_user
from tests.helpers import assert_ledger_ok, credit, micro
from tests.redemption.conftest import make_batch
from tests.usage.conftest import make_token
from usage.models import UsageRecord
from wallet.models import Wallet

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_sign_up_shows_zero_balance_and_low_balance_warning(
    site: Any, page: Page, shots: Shots
) -> None:
    page.goto(f"{site.url}/accounts/signup/")
    shots("signup")
    page.get_by_label("Email").fill("new.customer@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_test_id("balance")).to_have_text("0.00 credits")
    expect(page.get_by_test_id("low-balance")).to_contain_text("under your alert threshold")
    expect(page.get_by_test_id("requests")).to_have_text("0")
    shots("wallet")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the layout reflows
    expect(page.get_by_role("navigation", name="Console")).to_be_visible()
    shots("wallet-phone")


def test_redeeming_a_code_changes_the_balance(site: Any, page: Page, shots: Shots) -> None:
    user = make_user()
    code = make_batch(credits_micro=micro("25"), name="Launch promo").codes[0]
    log_in(page, site.url, user)
    expect(page.get_by_test_id("balance")).to_have_text("0.00 credits")
    page.get_by_role("textbox", name="Code", exact=True).fill(code.lower())
    shots("before")
    page.get_by_role("button", name="Redeem").click()
    expect(page.get_by_role("status")).to_contain_text("Code redeemed: 25.00 credits")
    expect(page.get_by_test_id("balance")).to_have_text("25.00 credits")
    shots("after")
    # The same code again: the error is a sentence, not a code.
    page.get_by_role("textbox", name="Code", exact=True).fill(code)
    page.get_by_role("button", name="Redeem").click()
    expect(page.locator(".errorlist")).to_contain_text("already")
    shots("again")
    assert_ledger_ok(Wallet.objects.get(user=user))


def test_buying_credits_through_checkout_shows_the_bill_and_the_balance(
    site: Any, page: Page, shots: Shots
) -> None:
    user = make_user()
    log_in(page, site.url, user)
    page.get_by_label("Custom amount (USD)").fill("100")
    page.get_by_role("button", name="See credits").click()
    expect(page.get_by_test_id("quote")).to_contain_text("100.00 credits")
    expect(page.get_by_test_id("quote")).to_contain_text("3.00 bonus")
    shots("quote")
    page.get_by_role("button", name="Continue to payment").click()
    expect(page.get_by_role("heading", name="Fake Stripe Checkout")).to_be_visible()
    shots("checkout")
    page.get_by_role("button", name="Pay 100.00 USD").click()
    # Back on our return page: the webhook was delivered before the redirect.
    expect(page.get_by_test_id("order-status")).to_have_text("Completed")
    shots("return")
    order = TopUpOrder.objects.get(user=user)
    assert order.status == TopUpOrder.Status.COMPLETED
    page.get_by_role("link", name="Bills").click()
    row = page.get_by_test_id(f"bill-{order.order_no}")
    expect(row).to_contain_text("103.00")
    expect(row).to_contain_text("100.00 USD")
    expect(row).to_contain_text("Completed")
    shots("bills")
    page.get_by_role("link", name="Wallet").click()
    expect(page.get_by_test_id("balance")).to_have_text("103.00 credits")
    expect(page.get_by_test_id("low-balance")).to_be_visible()  # still under 1,000
    shots("wallet")
    assert_ledger_ok(Wallet.objects.get(user=user))


def test_a_new_tokens_secret_is_shown_exactly_once(site: Any, page: Page, shots: Shots) -> None:
    user = make_user()
    log_in(page, site.url, user)
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("CI deploys")
    page.get_by_label("Quota (credits)").fill("50")
    page.get_by_label("Metering (authorize, capture, release, record)").check()
    shots("form")
    page.get_by_role("button", name="Create token").click()
    secret_box = page.get_by_test_id("secret-value")
    expect(secret_box).to_have_value(re.compile("^sk-live-"))
    secret = secret_box.input_value()
    shots("secret")
    token = ApiToken.objects.get(user=user)
    assert token_hashing.secret_matches(secret, token.secret_hash)
    assert sorted(token.scopes) == ["inference", "metering"]
    row = page.get_by_test_id(f"token-{token.pk}")
    expect(row).to_contain_text("50.00")
    page.reload()
    expect(page.get_by_test_id(f"token-{token.pk}")).to_be_visible()
    expect(page.get_by_test_id("new-secret")).to_have_count(0)
    assert secret not in page.content()
    shots("reloaded")


def _metered_call(base: str, secret: str) -> dict[str, Any]:
    response = httpx.post(
        f"{base}/api/v1/usage",
        json={"model": "test-chat", "input_tokens": 1200, "output_tokens": 300},
        headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "browser-call-1"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_metered_call_appears_in_usage_records_and_the_csv(
    site: Any, page: Page, shots: Shots, prices: Any
) -> None:
    user = make_user()
    credit(Wallet.objects.get(user=user), "10")
    _token, secret = make_token(user, scopes=("metering", "read"))
    record = _metered_call(site.url, secret)
    log_in(page, site.url, user)
    expect(page.get_by_test_id("requests")).to_have_text("1")
    page.get_by_role("link", name="Usage records").click()
    row = page.get_by_test_id("usage-row")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("test-chat")
    expect(row).to_contain_text(record["charged"].rstrip("0"))
    expect(page.get_by_test_id("model-summary")).to_contain_text("test-chat")
    expect(page.get_by_test_id("chart")).to_be_visible()
    row.get_by_text("Factors").click()
    expect(row.locator(".formula")).to_contain_text("tier rate")
    shots("usage")
    with page.expect_download() as download_info:
        page.get_by_test_id("export").click()
    download = download_info.value
    path = download.path()
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text(encoding="utf-8"))))
    assert [r["request_id"] for r in rows] == ["browser-call-1"]
    assert rows[0]["model"] == "test-chat"
    page.get_by_role("link", name=re.compile(r"\d{4}-\d\d-\d\d")).first.click()
    expect(page.get_by_role("heading", name="How the price was computed")).to_be_visible()
    shots("detail")
    assert_ledger_ok(Wallet.objects.get(user=user))


def test_a_second_user_cannot_open_the_first_users_pages_or_objects(
    site: Any, page: Page, shots: Shots, prices: Any
) -> None:
    first, second = make_user(), make_user()
    credit(Wallet.objects.get(user=first), "10")
    token, secret = make_token(first, scopes=("metering", "read"))
    _metered_call(site.url, secret)
    order = TopUpOrder.objects.create(
        order_no="T-BROWSER-0001",
        user=first,
        wallet=Wallet.objects.get(user=first),
        amount_minor=1000,
        currency="usd",
        payment_method=TopUpOrder.PaymentMethod.BANK_TRANSFER,
        provider="manual",
        credits_per_usd=1,
        base_micro=micro("10"),
    )
    record_id = UsageRecord.objects.get(user=first).pk
    log_in(page, site.url, second)
    for path in (
        f"/console/usage/{record_id}/",
        f"/billing/return/?order={order.order_no}",
        f"/billing/cancel/?order={order.order_no}",
    ):
        response = page.goto(f"{site.url}{path}")
        assert response is not None and response.status == 404, path
        expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    shots("not-found")
    for path in (
        "/console/usage/",
        "/console/bills/",
        "/console/tokens/",
        "/console/transactions/",
    ):
        page.goto(f"{site.url}{path}")
        body = page.locator("main")
        expect(body).to_be_visible()
        text = body.inner_text()
        for theirs in ("test-chat", order.order_no, token.prefix):
            assert theirs not in text, (path, theirs)
        shots(path.strip("/").replace("/", "-"))
    # A forged revoke of the first user's token is refused and changes nothing.
    page.goto(f"{site.url}/console/tokens/")
    status = page.evaluate(
        """async (id) => {
            const csrf = document.querySelector("input[name=csrfmiddlewaretoken]").value;
            const r = await fetch(`/console/tokens/${id}/revoke/`, {method: "POST",
              headers: {"X-CSRFToken": csrf}, redirect: "manual"});
            return r.status;
        }""",
        token.pk,
    )
    assert status == 404
    token.refresh_from_db()
    assert token.status == ApiToken.Status.ACTIVE
