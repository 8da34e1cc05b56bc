"""How much a top-up costs and what it buys: the one formula for packages, preset and custom
amounts, and the proportional split of a refund.

* Fiat is integer minor units (cents) of ``BILLING_CURRENCY``; only two-decimal currencies.
* base credits  = amount x CREDITS_PER_USD (``wallet.money.usd_to_micro``, exact for cents)
* bonus credits = base x percent / 100 of the one active BonusRule whose inclusive range of
  minor units contains the amount (none: no bonus), rounded up to the µcr (the wallet's
  single rounding rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from django.conf import settings

from billing.errors import (
    AmountAboveMaximum,
    AmountBelowMinimum,
    InvalidTopUpAmount,
    UnsupportedCurrency,
)
from billing.models import BonusRule
from wallet import money
from wallet.errors import InvalidAmount

MINOR_PER_MAJOR = 100
_MINOR = Decimal(MINOR_PER_MAJOR)


@dataclass(frozen=True)
class Quote:
    amount_minor: int
    currency: str
    base_micro: int
    bonus_micro: int
    bonus_percent: Decimal
    bonus_rule_id: int | None
    credits_per_usd: Decimal

    @property
    def total_micro(self) -> int:
        return self.base_micro + self.bonus_micro


def billing_currency() -> str:
    return str(settings.BILLING_CURRENCY).lower()


def currency_clean(currency: object) -> str:
    """The order currency: blank means the configured one; anything else must equal it."""
    text = str(currency or "").strip().lower()
    if not text:
        return billing_currency()
    if text != billing_currency():
        raise UnsupportedCurrency(currency=text, supported=[billing_currency()])
    return text


def minor_to_major(amount_minor: int) -> Decimal:
    return Decimal(amount_minor) / _MINOR


def format_minor(amount_minor: int) -> str:
    """``12345`` -> ``"123.45"``: the API's textual form of a fiat amount."""
    return f"{minor_to_major(amount_minor):.2f}"


def parse_amount(value: object) -> int:
    """A positive amount in major units (``"100"``, ``"49.99"``) as minor units.

    Refuses non-numbers, floats, zero, negatives and more than two decimal places with
    ``invalid_amount``; never rounds what a person typed.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidTopUpAmount("An amount is required.")
    try:
        major = money.to_decimal(value)
    except InvalidAmount as exc:
        raise InvalidTopUpAmount(exc.message, value=str(value)[:40]) from exc
    minor = major * _MINOR
    if minor != minor.to_integral_value():
        raise InvalidTopUpAmount(
            "The amount has more than two decimal places.", value=str(value)[:40]
        )
    if minor <= 0:
        raise InvalidTopUpAmount("The amount must be positive.", value=str(value)[:40])
    return int(minor)


def limit_minor(which: str) -> int:
    bound = settings.TOPUP_MIN_AMOUNT if which == "min" else settings.TOPUP_MAX_AMOUNT
    return int((Decimal(bound) * _MINOR).to_integral_value(rounding=ROUND_FLOOR))


def custom_amount_check(amount_minor: int) -> None:
    """A customer-chosen amount must lie within the configured bounds (inclusive)."""
    if amount_minor < limit_minor("min"):
        raise AmountBelowMinimum(
            minimum=format_minor(limit_minor("min")), amount=format_minor(amount_minor)
        )
    if amount_minor > limit_minor("max"):
        raise AmountAboveMaximum(
            maximum=format_minor(limit_minor("max")), amount=format_minor(amount_minor)
        )


def bonus_rule_for(*, amount_minor: int, currency: str) -> BonusRule | None:
    """The active rule covering the amount. Rules are validated not to overlap; should two
    match anyway (edited concurrently), the one with the higher floor wins, deterministically."""
    candidates = BonusRule.objects.filter(
        currency=currency, is_active=True, min_amount_minor__lte=amount_minor
    ).order_by("-min_amount_minor", "-id")
    for rule in candidates:
        if rule.max_amount_minor is None or amount_minor <= rule.max_amount_minor:
            return rule
    return None


def quote(*, amount_minor: int, currency: str) -> Quote:
    """Base and bonus credits for paying ``amount_minor`` (no bounds check: see
    ``custom_amount_check``, which applies to custom amounts only)."""
    rate = money.credits_per_usd()
    base = money.usd_to_micro(minor_to_major(amount_minor))
    rule = bonus_rule_for(amount_minor=amount_minor, currency=currency)
    percent = rule.percent if rule is not None else Decimal(0)
    bonus = money.round_micro(Decimal(base) * percent / 100)
    return Quote(
        amount_minor=amount_minor,
        currency=currency,
        base_micro=base,
        bonus_micro=bonus,
        bonus_percent=percent,
        bonus_rule_id=rule.pk if rule is not None else None,
        credits_per_usd=rate,
    )


def _ceil_div(numerator: int, denominator: int) -> int:
    """Exact integer division rounded up: the rounding rule of ``wallet.money`` on ints."""
    return -(-numerator // denominator)


@dataclass(frozen=True)
class RefundPosition:
    """Where an order stands for refunds: money and credits not yet refunded, and the
    credits of its lots still unused."""

    amount_left_minor: int
    credits_left_micro: int
    paid_unused_micro: int
    bonus_unused_micro: int
    order_base_micro: int
    order_bonus_micro: int

    @property
    def unused_micro(self) -> int:
        return self.paid_unused_micro + self.bonus_unused_micro


@dataclass(frozen=True)
class RefundCredits:
    paid_micro: int
    bonus_micro: int
    shortfall_micro: int


def refundable_minor(position: RefundPosition) -> int:
    """The refund policy: bonus credits count as part of what was bought, so what can be
    refunded is the unused fraction of the order's credits (paid + bonus, net of earlier
    refunds) times the money not yet refunded, rounded down so a refund never exceeds the
    unused share: ``floor(amount_left x unused / credits_left)``. Spent credits are not
    refundable."""
    if position.amount_left_minor <= 0 or position.credits_left_micro <= 0:
        return 0
    return min(
        position.amount_left_minor,
        position.amount_left_minor * position.unused_micro // position.credits_left_micro,
    )


def refund_credits(position: RefundPosition, *, amount_minor: int) -> RefundCredits:
    """The credits a refund of ``amount_minor`` takes back: ``ceil(credits_left x amount /
    amount_left)`` (rounded up to the µcr, the wallet's rule). The bonus lot gives the
    order's bonus proportion of them as far as it has credits left, the paid lot the rest.
    When fewer credits are unused than that (only possible for a refund made at the
    provider, which we cannot refuse), all unused credits are taken and the rest is the
    ``shortfall``."""
    if position.amount_left_minor <= 0 or amount_minor <= 0:
        return RefundCredits(0, 0, 0)
    wanted = _ceil_div(position.credits_left_micro * amount_minor, position.amount_left_minor)
    take = min(wanted, position.unused_micro)
    total = position.order_base_micro + position.order_bonus_micro
    bonus_wanted = _ceil_div(take * position.order_bonus_micro, total)
    bonus = min(position.bonus_unused_micro, max(bonus_wanted, take - position.paid_unused_micro))
    return RefundCredits(paid_micro=take - bonus, bonus_micro=bonus, shortfall_micro=wanted - take)
