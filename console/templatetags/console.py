from decimal import Decimal

from django import template

register = template.Library()


@register.filter
def plain(value: Decimal | int | None) -> str:
    """A decimal without trailing zeros or exponent: ``1000`` not ``1E+3``, ``2.5`` not
    ``2.500000``."""
    if value is None:
        return ""
    text = format(Decimal(value).normalize(), "f")
    return text
