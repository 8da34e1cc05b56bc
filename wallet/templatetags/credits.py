from django import template

from wallet import money

register = template.Library()


@register.filter
def credits(micro: int | None) -> str:
    """Format µcr as credits: ``{{ wallet.balance|credits }}``."""
    return money.format_credits(int(micro or 0))
