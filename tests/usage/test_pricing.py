"""The one pricing function, against a table of hand-computed charges."""

from __future__ import annotations

from decimal import Decimal

import pytest

from usage.models import ModelPrice
from usage.pricing import Usage, estimate_usage, output_reserve, price_usage

D = Decimal


def price(**fields: str | None) -> ModelPrice:
    values = {
        "model": "m",
        "input_usd_per_mtok": D(fields.pop("input", "0")),
        "output_usd_per_mtok": D(fields.pop("output", "0")),
        "request_usd": D(fields.pop("fee", "0")),
        "unit_usd": D(fields.pop("unit", "0")),
    }
    cached, reasoning = fields.pop("cached", None), fields.pop("reasoning", None)
    values["cached_input_usd_per_mtok"] = D(cached) if cached is not None else None
    values["reasoning_usd_per_mtok"] = D(reasoning) if reasoning is not None else None
    assert not fields
    return ModelPrice(**values)


GPT4O = {"input": "2.50", "cached": "1.25", "output": "10"}
O1 = {"input": "15", "cached": "7.5", "output": "60", "reasoning": "60"}
MINI = {"input": "0.15", "cached": "0.075", "output": "0.60"}
SEARCH = {"input": "3", "output": "15", "fee": "0.005"}

# (price, usage, tier, markup, credits_per_usd, expected µcr, expected usd)
CASES = [
    # 600 uncached x 2.5 + 400 cached x 1.25 + 500 out x 10, per million = $0.007
    (GPT4O, Usage(1000, 500, 400), "1", "1", "1", 7_000, "0.007"),
    (GPT4O, Usage(1000, 500, 400), "0.3", "1", "1", 2_100, "0.007"),
    (GPT4O, Usage(1000, 500, 400), "1.5", "1.2", "1000", 12_600_000, "0.007"),
    (GPT4O, Usage(1000, 500, 400), "1", "1", "1000", 7_000_000, "0.007"),
    # no cached price: cached tokens cost the input price
    ({"input": "2", "output": "8"}, Usage(1000, 0, 1000), "1", "1", "1", 2_000, "0.002"),
    # reasoning tokens on top of output: 1000x15 + 1000x7.5 + 300x60 + 1200x60 = $0.1125
    (O1, Usage(2000, 300, 1000, 1200), "1", "1", "1", 112_500, "0.1125"),
    (O1, Usage(2000, 300, 1000, 1200), "0.3", "1", "1", 33_750, "0.1125"),
    # no reasoning price: reasoning costs the output price
    ({"input": "1", "output": "4"}, Usage(0, 0, 0, 1000), "1", "1", "1", 4_000, "0.004"),
    # per-request fee: 900x3 + 450x15 + $0.005 = $0.01445
    (SEARCH, Usage(900, 450), "1", "1", "1", 14_450, "0.01445"),
    ({"fee": "0.005"}, Usage(), "1", "1", "1", 5_000, "0.005"),
    # task units: 3 images x $0.04 + 60 prompt tokens x $5/M = $0.1203
    ({"input": "5", "unit": "0.04"}, Usage(60, task_units=D(3)), "1", "1", "1", 120_300, "0.1203"),
    # 3.5 minutes of audio x $0.006
    ({"unit": "0.006"}, Usage(task_units=D("3.5")), "1", "1", "1", 21_000, "0.021"),
    ({"unit": "0.006"}, Usage(task_units=D("3.5")), "0.3", "1.25", "1000", 7_875_000, "0.021"),
    # one token of a cheap model: 0.15 µcr rounds UP to 1 µcr, even at tier 0.3
    (MINI, Usage(1), "1", "1", "1", 1, "0.00000015"),
    (MINI, Usage(1), "0.3", "1", "1", 1, "0.00000015"),
    # exact amounts are not rounded: 7 tokens x $1/M = 7 µcr
    ({"input": "1"}, Usage(7), "1", "1", "1", 7, "0.000007"),
    # 0.15 + 0.6 = $0.75 for a million in and out; x 1.25 x 0.3 x 1000 = 281.25 credits
    (MINI, Usage(1_000_000, 1_000_000), "0.3", "1.25", "1000", 281_250_000, "0.75"),
    # 1 token at $2.5/M x 0.3 = 0.75 µcr -> 1; 3 tokens = 2.25 -> 3
    (GPT4O, Usage(3), "0.3", "1", "1", 3, "0.0000075"),
    (MINI, Usage(0), "1", "1", "1", 0, "0"),
]


@pytest.mark.parametrize(("rates", "usage", "tier", "markup", "cpu", "micro", "usd"), CASES)
def test_exact_cost(
    settings, rates, usage: Usage, tier: str, markup: str, cpu: str, micro: int, usd: str
) -> None:  # type: ignore[no-untyped-def]
    settings.CREDITS_PER_USD = D(cpu)
    settings.PRICE_MARKUP = D(markup)
    breakdown = price_usage(price=price(**rates), usage=usage, tier_rate=D(tier))
    assert breakdown.credits_micro == micro
    assert breakdown.usd_cost == D(usd)
    assert (breakdown.markup, breakdown.tier_rate, breakdown.credits_per_usd) == (
        D(markup),
        D(tier),
        D(cpu),
    )


def test_breakdown_keeps_every_factor_and_its_lines_add_up(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PRICE_MARKUP = D("1.2")
    breakdown = price_usage(
        price=price(**O1, fee="0.001", unit="0.5"),
        usage=Usage(2000, 300, 1000, 1200, D(2)),
        tier_rate=D("0.3"),
    )
    assert sum(line.usd for line in breakdown.lines) == breakdown.usd_cost
    assert [line.label for line in breakdown.lines] == [
        "uncached input tokens",
        "cached input tokens",
        "output tokens",
        "reasoning tokens",
        "request fee",
        "task units (unit)",
    ]
    assert breakdown.usd_cost == D("1.1135")
    # 1.1135 x 1.2 x 1 x 0.3 = 0.400860 credits
    assert breakdown.credits_micro == 400_860
    assert breakdown.formula == (
        "1.1135 USD x 1.2 markup x 1 credits/USD x 0.3 tier rate = 0.400860 credits "
        "(rounded up to the µcr)"
    )


def test_cached_tokens_cannot_exceed_input() -> None:
    with pytest.raises(ValueError):
        price_usage(price=price(**GPT4O), usage=Usage(10, 0, 11), tier_rate=D(1))


def test_estimate_reserves_output_at_the_dearer_of_output_and_reasoning(settings) -> None:  # type: ignore[no-untyped-def]
    settings.METERING_DEFAULT_MAX_TOKENS = 1000
    reasoner = price(input="1", output="2", reasoning="8")
    assert estimate_usage(price=reasoner, input_tokens=5, output_tokens=100, task_units=D(0)) == (
        Usage(input_tokens=5, reasoning_tokens=100)
    )
    plain = price(input="1", output="2")
    assert estimate_usage(price=plain, input_tokens=5, output_tokens=100, task_units=D(0)) == (
        Usage(input_tokens=5, output_tokens=100)
    )
    assert output_reserve(price=plain, max_tokens=None) == 1000
    plain.max_output_tokens = 300
    assert output_reserve(price=plain, max_tokens=5000) == 300
    assert output_reserve(price=plain, max_tokens=200) == 200


@pytest.mark.parametrize(("rates", "usage", "tier", "markup", "cpu", "micro", "usd"), CASES)
def test_a_record_recomputes_its_charge(
    settings, rates, usage: Usage, tier: str, markup: str, cpu: str, micro: int, usd: str
) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from usage.pricing import breakdown_from_record

    settings.CREDITS_PER_USD = D(cpu)
    settings.PRICE_MARKUP = D(markup)
    priced = price_usage(price=price(**rates), usage=usage, tier_rate=D(tier))
    record = SimpleNamespace(
        price_id=None,
        model="m",
        unit_name="",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        task_units=usage.task_units,
        input_usd_per_mtok=priced.input_usd_per_mtok,
        output_usd_per_mtok=priced.output_usd_per_mtok,
        cached_input_usd_per_mtok=priced.cached_input_usd_per_mtok,
        reasoning_usd_per_mtok=priced.reasoning_usd_per_mtok,
        request_usd=priced.request_usd,
        unit_usd=priced.unit_usd,
        markup=priced.markup,
        tier_rate=priced.tier_rate,
        credits_per_usd=priced.credits_per_usd,
    )
    settings.CREDITS_PER_USD = D("777")  # today's settings do not matter to a record
    rebuilt = breakdown_from_record(record)
    assert (rebuilt.credits_micro, rebuilt.usd_cost) == (micro, D(usd))
