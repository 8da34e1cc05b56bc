"""The quote formula, the bonus table and its boundaries, and the quote API's bad inputs."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from billing import pricing
from billing.models import BonusRule, TopUpOrder
from tests.billing.conftest import api
from tests.helpers import micro

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("dollars", "credits"),
    [
        ("10", "10"),
        ("100", "103"),
        ("500", "520"),
        ("1000", "1100"),
        ("2000", "2240"),
    ],
)
@pytest.mark.parametrize("rate", ["1", "1000"])
def test_the_bonus_table_gives_the_documented_credits(
    settings, dollars: str, credits: str, rate: str
) -> None:
    settings.CREDITS_PER_USD = Decimal(rate)
    quote = pricing.quote(amount_minor=int(Decimal(dollars) * 100), currency="usd")
    assert quote.total_micro == micro(credits) * int(rate)
    assert quote.base_micro == micro(dollars) * int(rate)


@pytest.mark.parametrize(
    ("cents", "percent"),
    [
        (1, "0"),
        (9_999, "0"),
        (10_000, "3"),
        (49_999, "3"),
        (50_000, "4"),
        (99_999, "4"),
        (100_000, "10"),
        (100_001, "12"),
        (1_000_000, "12"),
    ],
)
def test_bonus_boundaries_are_inclusive_and_exact(cents: int, percent: str) -> None:
    quote = pricing.quote(amount_minor=cents, currency="usd")
    assert quote.bonus_percent == Decimal(percent)
    assert quote.bonus_micro == pricing.money.round_micro(
        Decimal(quote.base_micro) * Decimal(percent) / 100
    )


def test_bonus_rounds_up_to_the_micro_credit() -> None:
    # $123.45 at 3% = 3.7035 credits exactly; $100.01 at 3% = 3.0003 credits exactly.
    assert pricing.quote(amount_minor=12_345, currency="usd").bonus_micro == 3_703_500
    rule = BonusRule.objects.get(min_amount_minor=10_000)
    rule.percent = Decimal("3.333")
    rule.save()
    # 100.01 x 3.333% = 3.33333333 credits -> 3,333,334 µcr (rounded up).
    assert pricing.quote(amount_minor=10_001, currency="usd").bonus_micro == 3_333_334


def test_an_amount_no_rule_covers_earns_no_bonus() -> None:
    BonusRule.objects.all().delete()
    quote = pricing.quote(amount_minor=200_000, currency="usd")
    assert (quote.bonus_micro, quote.bonus_rule_id) == (0, None)


def test_overlapping_active_bonus_rules_are_refused() -> None:
    overlapping = BonusRule(
        currency="usd", min_amount_minor=40_000, max_amount_minor=60_000, percent=Decimal(5)
    )
    with pytest.raises(ValidationError, match="overlaps"):
        overlapping.full_clean()
    # The same range inactive, or in another currency, is fine.
    overlapping.is_active = False
    overlapping.full_clean()
    BonusRule(
        currency="eur", min_amount_minor=40_000, max_amount_minor=60_000, percent=Decimal(5)
    ).full_clean()
    with pytest.raises(ValidationError):
        BonusRule(
            currency="eur", min_amount_minor=10, max_amount_minor=5, percent=Decimal(1)
        ).full_clean()


def test_quote_api_returns_base_and_bonus(user) -> None:
    response = api(user).get("/api/v1/topups/quote", {"amount": "500"})
    assert response.status_code == 200
    body = response.json()
    assert body["amount_minor"] == 50_000
    assert (body["base_credits"], body["bonus_credits"], body["total_credits"]) == (
        "500",
        "20",
        "520",
    )
    assert body["bonus_micro"] == micro("20")
    assert body["bonus_percent"] == "4"


def test_quote_api_prices_a_package_by_the_same_formula(user) -> None:
    body = api(user).get("/api/v1/topups/quote", {"package": "business"}).json()
    assert (body["package"], body["amount"], body["total_credits"]) == (
        "business",
        "1000.00",
        "1100",
    )


def test_packages_endpoint_lists_presets_with_quotes_and_the_bonus_table(user) -> None:
    body = api(user).get("/api/v1/topups/packages").json()
    assert [p["code"] for p in body["packages"]] == ["starter", "plus", "pro", "business"]
    assert [p["amount"] for p in body["amounts"]] == [
        "10.00",
        "20.00",
        "50.00",
        "100.00",
        "200.00",
        "500.00",
    ]
    assert body["amounts"][3]["total_credits"] == "103"
    assert body["custom_amount"] == {"minimum": "5.00", "maximum": "10000.00"}
    assert body["bonus_rules"][-1] == {"min_amount": "1000.01", "max_amount": None, "percent": "12"}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"amount": "4.99"}, "amount_below_minimum"),
        ({"amount": "10000.01"}, "amount_above_maximum"),
        ({"amount": "1e9"}, "amount_above_maximum"),
        ({"amount": "ten"}, "invalid_amount"),
        ({"amount": "10.001"}, "invalid_amount"),
        ({"amount": "-20"}, "invalid_amount"),
        ({"amount": "0"}, "invalid_amount"),
        ({"amount": "NaN"}, "invalid_amount"),
        ({"amount": "Infinity"}, "invalid_amount"),
        ({}, "invalid_amount"),
        ({"amount": "100", "currency": "eur"}, "unsupported_currency"),
        ({"amount": "100", "currency": "usdx"}, "unsupported_currency"),
        ({"package": "platinum"}, "unknown_package"),
        ({"package": "pro", "amount": "100"}, "invalid_input"),
    ],
)
def test_quote_api_refuses_bad_input_with_a_stable_code(user, params, code: str) -> None:
    response = api(user).get("/api/v1/topups/quote", params)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == code


def test_custom_bounds_come_from_settings(user, settings) -> None:
    settings.TOPUP_MIN_AMOUNT = Decimal("20")
    settings.TOPUP_MAX_AMOUNT = Decimal("50")
    client = api(user)
    below = client.get("/api/v1/topups/quote", {"amount": "19.99"}).json()["error"]
    assert below["code"] == "amount_below_minimum"
    assert below["detail"]["minimum"] == "20.00"
    assert client.get("/api/v1/topups/quote", {"amount": "50"}).status_code == 200
    assert client.get("/api/v1/topups/quote", {"amount": "50.01"}).status_code == 400


def test_quote_api_requires_log_in() -> None:
    response = Client().get("/api/v1/topups/quote", {"amount": "10"})
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "not_authenticated"
    assert not TopUpOrder.objects.exists()


def test_the_openapi_schema_documents_the_top_up_endpoints(user) -> None:
    schema = api(user).get("/api/schema/", {"format": "json"}).json()
    for path in (
        "/api/v1/topups",
        "/api/v1/topups/quote",
        "/api/v1/topups/packages",
        "/api/v1/topups/{order_no}",
        "/api/v1/topups/{order_no}/cancel",
        "/api/v1/topups/{order_no}/refunds",
    ):
        assert path in schema["paths"], path
    order = schema["components"]["schemas"]["OrderOutput"]["properties"]
    assert {"order_no", "status", "checkout_url", "credits_added_micro"} <= set(order)
