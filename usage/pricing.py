"""The one pricing function (DESIGN.md, "Request cost"):

    usd_cost = (input - cached) x input_price + cached x cached_price + output x output_price
             + reasoning x reasoning_price + request_fee + task_units x unit_price
    credits  = usd_cost x markup x credits_per_usd x tier_rate, rounded UP to the µcr once

Token prices are USD per million tokens. Everything is ``Decimal``; the only rounding is
``wallet.money``'s. ``PriceBreakdown`` keeps every factor so a customer (and the per-request
breakdown of the console) can recompute the charge.

``output_tokens`` are the visible output tokens; ``reasoning_tokens`` are counted on their
own (a provider that reports reasoning inside its completion tokens must subtract them),
and ``cached_input_tokens`` are the part of ``input_tokens`` served from the prompt cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings

from usage.models import ModelPrice
from wallet import money

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    task_units: Decimal = field(default_factory=Decimal)

    @property
    def tokens(self) -> int:
        """Every token of the request (cached input is part of the input): what a
        tokens-per-minute limit counts."""
        return self.input_tokens + self.output_tokens + self.reasoning_tokens


@dataclass(frozen=True)
class PriceLine:
    label: str
    quantity: Decimal
    unit_usd: Decimal  # per token (from per-million prices) or per unit / request
    usd: Decimal


@dataclass(frozen=True)
class PriceBreakdown:
    """A priced request: the usage, each rate used, each multiplier, the exact USD cost and
    the credits charged for it."""

    price_id: int | None
    model: str
    usage: Usage
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    cached_input_usd_per_mtok: Decimal
    reasoning_usd_per_mtok: Decimal
    request_usd: Decimal
    unit_usd: Decimal
    unit_name: str
    markup: Decimal
    tier_rate: Decimal
    credits_per_usd: Decimal
    usd_cost: Decimal
    credits_micro: int

    @property
    def lines(self) -> list[PriceLine]:
        u = self.usage
        per_token = [
            (
                "uncached input tokens",
                u.input_tokens - u.cached_input_tokens,
                self.input_usd_per_mtok,
            ),
            ("cached input tokens", u.cached_input_tokens, self.cached_input_usd_per_mtok),
            ("output tokens", u.output_tokens, self.output_usd_per_mtok),
            ("reasoning tokens", u.reasoning_tokens, self.reasoning_usd_per_mtok),
        ]
        lines = [
            PriceLine(label, Decimal(count), rate / _MILLION, Decimal(count) * rate / _MILLION)
            for label, count, rate in per_token
        ]
        lines.append(PriceLine("request fee", Decimal(1), self.request_usd, self.request_usd))
        lines.append(
            PriceLine(
                f"task units ({self.unit_name or 'unit'})",
                u.task_units,
                self.unit_usd,
                u.task_units * self.unit_usd,
            )
        )
        return lines

    @property
    def formula(self) -> str:
        """The charge with every factor filled in, for people."""
        return (
            f"{_plain(self.usd_cost)} USD x {_plain(self.markup)} markup x "
            f"{_plain(self.credits_per_usd)} credits/USD x {_plain(self.tier_rate)} tier rate "
            f"= {money.micro_to_credits(self.credits_micro):.6f} credits (rounded up to the µcr)"
        )


ROUNDING = "rounded up to the next micro-credit (1 credit = 1,000,000 µcr), once"


def breakdown_formula(b: PriceBreakdown) -> str:
    """The whole charge with every number filled in, in two steps that recompute exactly:
    the USD cost from each count and rate, then the credits from the USD cost and each
    multiplier, rounded up once to the µcr (``wallet.money.round_micro``)."""
    u = b.usage
    million = _plain(_MILLION)
    usd = (
        f"usd_cost = ({u.input_tokens} - {u.cached_input_tokens}) x "
        f"{_plain(b.input_usd_per_mtok)} / {million} + {u.cached_input_tokens} x "
        f"{_plain(b.cached_input_usd_per_mtok)} / {million} + {u.output_tokens} x "
        f"{_plain(b.output_usd_per_mtok)} / {million} + {u.reasoning_tokens} x "
        f"{_plain(b.reasoning_usd_per_mtok)} / {million} + {_plain(b.request_usd)} + "
        f"{_plain(u.task_units)} x {_plain(b.unit_usd)} = {_plain(b.usd_cost)} USD"
    )
    credits = (
        f"credits = ceil({_plain(b.usd_cost)} x {_plain(b.markup)} x "
        f"{_plain(b.credits_per_usd)} x {_plain(b.tier_rate)} x "
        f"{money.MICRO_PER_CREDIT}) µcr = {b.credits_micro} µcr = "
        f"{money.micro_to_credits(b.credits_micro):.6f} credits"
    )
    return f"{usd}; {credits}"


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text


def usd_cost(
    *,
    usage: Usage,
    input_usd_per_mtok: Decimal,
    output_usd_per_mtok: Decimal,
    cached_input_usd_per_mtok: Decimal,
    reasoning_usd_per_mtok: Decimal,
    request_usd: Decimal,
    unit_usd: Decimal,
) -> Decimal:
    """The exact provider cost in USD (no rounding)."""
    token_usd = (
        (usage.input_tokens - usage.cached_input_tokens) * input_usd_per_mtok
        + usage.cached_input_tokens * cached_input_usd_per_mtok
        + usage.output_tokens * output_usd_per_mtok
        + usage.reasoning_tokens * reasoning_usd_per_mtok
    ) / _MILLION
    return token_usd + request_usd + usage.task_units * unit_usd


def price_usage(
    *, price: ModelPrice, usage: Usage, tier_rate: Decimal, markup: Decimal | None = None
) -> PriceBreakdown:
    """Price ``usage`` at catalog version ``price`` for a token whose tier rate is
    ``tier_rate``. ``markup`` defaults to ``settings.PRICE_MARKUP``."""
    if usage.cached_input_tokens > usage.input_tokens:
        raise ValueError("cached input tokens are part of the input tokens")
    markup = Decimal(settings.PRICE_MARKUP) if markup is None else markup
    rates = {
        "input_usd_per_mtok": price.input_usd_per_mtok,
        "output_usd_per_mtok": price.output_usd_per_mtok,
        "cached_input_usd_per_mtok": price.cached_rate,
        "reasoning_usd_per_mtok": price.reasoning_rate,
        "request_usd": price.request_usd,
        "unit_usd": price.unit_usd,
    }
    cost = usd_cost(usage=usage, **rates)
    return PriceBreakdown(
        price_id=price.pk,
        model=price.model,
        usage=usage,
        unit_name=price.unit_name,
        markup=markup,
        tier_rate=tier_rate,
        credits_per_usd=money.credits_per_usd(),
        usd_cost=cost,
        credits_micro=money.usd_to_micro(cost, rate=markup * tier_rate),
        **rates,
    )


# --- Estimates for authorizations ------------------------------------------------------

CHARS_PER_TOKEN = 4


def estimate_tokens(text_chars: int) -> int:
    """DESIGN.md's estimate: four characters per token, rounded up."""
    return math.ceil(text_chars / CHARS_PER_TOKEN)


def output_reserve(*, price: ModelPrice, max_tokens: int | None) -> int:
    """Output tokens to reserve: ``max_tokens`` (or the default), capped by the model."""
    tokens = max_tokens if max_tokens is not None else settings.METERING_DEFAULT_MAX_TOKENS
    if price.max_output_tokens is not None:
        tokens = min(tokens, price.max_output_tokens)
    return tokens


def estimate_usage(
    *, price: ModelPrice, input_tokens: int, output_tokens: int, task_units: Decimal
) -> Usage:
    """The most a request may cost: every output token at the dearer of the output and
    reasoning prices (a reasoning model may spend its whole budget thinking)."""
    if price.reasoning_rate > price.output_usd_per_mtok:
        return Usage(
            input_tokens=input_tokens, reasoning_tokens=output_tokens, task_units=task_units
        )
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, task_units=task_units)


def breakdown_from_record(record: Any) -> PriceBreakdown:
    """The breakdown of a recorded charge, rebuilt from the factors on the usage record
    (not from today's catalog), with the credits recomputed by the same formula: for any
    record, ``breakdown_from_record(r).credits_micro == r.cost_micro``."""
    usage = Usage(
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cached_input_tokens=record.cached_input_tokens,
        reasoning_tokens=record.reasoning_tokens,
        task_units=record.task_units,
    )
    rates = {
        "input_usd_per_mtok": record.input_usd_per_mtok,
        "output_usd_per_mtok": record.output_usd_per_mtok,
        "cached_input_usd_per_mtok": record.cached_input_usd_per_mtok,
        "reasoning_usd_per_mtok": record.reasoning_usd_per_mtok,
        "request_usd": record.request_usd,
        "unit_usd": record.unit_usd,
    }
    cost = usd_cost(usage=usage, **rates)
    factor = record.markup * record.tier_rate * record.credits_per_usd
    return PriceBreakdown(
        price_id=record.price_id,
        model=record.model,
        usage=usage,
        unit_name=record.unit_name,
        markup=record.markup,
        tier_rate=record.tier_rate,
        credits_per_usd=record.credits_per_usd,
        usd_cost=cost,
        credits_micro=money.round_micro(cost * factor * money.MICRO_PER_CREDIT),
        **rates,
    )
