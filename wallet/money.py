"""The one place that knows what a credit is.

* Credits are integers of micro-credits (µcr): 1 credit = 1,000,000 µcr.
* The single rounding rule: a value with a fraction of a µcr is rounded UP to the next µcr
  (``round_micro``). Charges round up, so a price is never under-collected by rounding; it
  is the only rounding anywhere on a money path.
* USD converts to credits at ``settings.CREDITS_PER_USD``, once, at pricing time.
* No float ever enters these functions: inputs are int, Decimal or decimal strings.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation

from django.conf import settings

from wallet.errors import InvalidAmount

MICRO_PER_CREDIT = 1_000_000
_MICRO = Decimal(MICRO_PER_CREDIT)


def max_amount_micro() -> int:
    return int(settings.WALLET_MAX_AMOUNT_MICRO)


def credits_per_usd() -> Decimal:
    return Decimal(settings.CREDITS_PER_USD)


def round_micro(value: Decimal) -> int:
    """THE rounding rule: fractions of a micro-credit round up."""
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def validate_micro(amount: object, *, allow_zero: bool = False, field: str = "amount") -> int:
    """Return ``amount`` as an int of µcr, or raise ``InvalidAmount``.

    Accepts ints only: bools, floats, Decimals and strings are refused so that a money path
    can never be fed a rounded float by accident.
    """
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(f"The {field} must be a whole number of micro-credits.", field=field)
    if amount < 0 or (amount == 0 and not allow_zero):
        raise InvalidAmount(f"The {field} must be positive.", field=field, value=amount)
    if amount > max_amount_micro():
        raise InvalidAmount(
            f"The {field} is larger than the maximum allowed in one operation.",
            field=field,
            value=amount,
            maximum=max_amount_micro(),
        )
    return amount


def to_decimal(value: object, *, field: str = "amount") -> Decimal:
    """Parse user input (int, Decimal or a decimal string) without ever going through float."""
    if isinstance(value, bool | float):
        raise InvalidAmount(f"The {field} must be a decimal number, not a float.", field=field)
    try:
        parsed = Decimal(str(value).strip().replace(",", "").replace("_", ""))
    except (InvalidOperation, ValueError) as exc:
        raise InvalidAmount(f"The {field} is not a number.", field=field) from exc
    if not parsed.is_finite():
        raise InvalidAmount(f"The {field} is not a number.", field=field)
    return parsed


def credits_to_micro(value: object, *, allow_zero: bool = False, field: str = "amount") -> int:
    """Exact conversion of a credit amount (e.g. ``"12.5"``) to µcr.

    Input with more precision than one µcr is refused rather than rounded: a person typing
    an amount means exactly that amount.
    """
    micro = to_decimal(value, field=field) * _MICRO
    if micro != micro.to_integral_value():
        raise InvalidAmount(f"The {field} has more than six decimal places.", field=field)
    return validate_micro(int(micro), allow_zero=allow_zero, field=field)


def micro_to_credits(micro: int) -> Decimal:
    return Decimal(micro) / _MICRO


def usd_to_micro(usd: Decimal, *, rate: Decimal | None = None) -> int:
    """Convert a USD amount to µcr at ``CREDITS_PER_USD`` (times an optional extra rate),
    rounded once by the rounding rule."""
    factor = credits_per_usd() * (rate if rate is not None else Decimal(1))
    return round_micro(Decimal(usd) * factor * _MICRO)


def micro_to_usd(micro: int) -> Decimal:
    """The USD value of an amount of credits at the configured rate (for reports)."""
    return Decimal(micro) / _MICRO / credits_per_usd()


def format_credits(micro: int, *, places: int = 2) -> str:
    """Human formatting: thousands separators, at least ``places`` decimals, and more when
    the amount has them (``1,234.50``, ``0.000123``). Never rounds away a non-zero amount."""
    value = micro_to_credits(micro)
    text = f"{value:,.6f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    fraction = fraction.ljust(places, "0")
    return f"{whole}.{fraction}" if fraction else whole
