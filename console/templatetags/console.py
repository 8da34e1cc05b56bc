from decimal import Decimal
from typing import Any

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from usage.pricing import ROUNDING, breakdown_formula, breakdown_from_record
from wallet import money

register = template.Library()
TIMES = "\u00d7"  # the multiplication sign


@register.filter
def plain(value: Decimal | int | None) -> str:
    """A decimal without trailing zeros or exponent: ``1000`` not ``1E+3``, ``2.5`` not
    ``2.500000``."""
    if value is None:
        return ""
    text = format(Decimal(value).normalize(), "f")
    return text


@register.simple_tag
def price_factors(record: Any) -> SafeString:
    """Every factor of a usage record's price (``usage.pricing.breakdown_from_record``):
    the lines, the rates, the multipliers and the formula. Built here rather than in a
    template include because the usage page shows it for every row of a page."""
    b = breakdown_from_record(record)
    lines = format_html_join(
        "",
        "<tr><td>{}</td><td class='num'>{}</td><td class='num'>{}</td><td class='num'>{}</td></tr>",
        (
            (line.label[:1].upper() + line.label[1:], plain(line.quantity), plain(line.unit_usd),
             plain(line.usd))
            for line in b.lines
        ),
    )  # fmt: skip
    tier = plain(b.tier_rate)
    group = getattr(record, "token_group", None)
    if group is not None:
        tier = f"{tier} ({group.name})"
    cost = f"{money.format_credits(record.cost_micro)} credits"
    if record.shortfall_micro:
        cost += (
            f" (charged {money.format_credits(record.charged_micro)}, "
            f"{money.format_credits(record.shortfall_micro)} not covered by the balance)"
        )
    pairs = [
        ("Price version", f"#{b.price_id} ({b.model})"),
        (
            "Prices (USD per million tokens)",
            f"input {plain(b.input_usd_per_mtok)} · cached input "
            f"{plain(b.cached_input_usd_per_mtok)} · output {plain(b.output_usd_per_mtok)} · "
            f"reasoning {plain(b.reasoning_usd_per_mtok)}",
        ),
        (
            "Request fee / unit price",
            f"{plain(b.request_usd)} USD / {plain(b.unit_usd)} USD per {b.unit_name or 'unit'}",
        ),
        ("Provider cost", f"{plain(b.usd_cost)} USD"),
        ("Markup", f"{TIMES} {plain(b.markup)}"),
        ("Credits per USD", f"{TIMES} {plain(b.credits_per_usd)}"),
        ("Tier rate", f"{TIMES} {tier}"),
        ("Cost", cost),
        ("Rounding", ROUNDING),
    ]
    return format_html(
        "<table class='factors'><caption class='sr-only'>Every factor of the price of request "
        "{}</caption><thead><tr><th scope='col'>Item</th><th scope='col' class='num'>Quantity"
        "</th><th scope='col' class='num'>USD each</th><th scope='col' class='num'>USD</th>"
        "</tr></thead><tbody>{}</tbody></table><dl class='pairs small'>{}</dl>"
        "<p class='formula'>{}</p><p class='formula-full small mono'>{}</p>",
        record.request_id,
        lines,
        format_html_join("", "<dt>{}</dt><dd>{}</dd>", pairs),
        b.formula,
        breakdown_formula(b),  # the same as GET /api/v1/usage/{id} gives
    )
