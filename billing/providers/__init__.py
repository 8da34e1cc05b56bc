"""Payment providers: one small interface (``base.PaymentProvider``) and its implementations,
listed by name in ``settings.BILLING_PROVIDERS``. Adding a provider is one class and one
settings line; the wallet and the order state machine do not change."""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from billing.errors import PaymentMethodUnavailable
from billing.providers.base import CheckoutStart, PaymentNotice, PaymentProvider, ProviderRefund

__all__ = [
    "CheckoutStart",
    "PaymentNotice",
    "PaymentProvider",
    "ProviderRefund",
    "provider_for_method",
    "provider_get",
]


@cache
def _load(path: str) -> PaymentProvider:
    provider = import_string(path)()
    assert isinstance(provider, PaymentProvider), path
    return provider


def provider_get(name: str) -> PaymentProvider:
    path = settings.BILLING_PROVIDERS.get(name)
    if path is None:
        raise PaymentMethodUnavailable(f"Unknown payment provider {name!r}.", provider=name)
    return _load(path)


def provider_for_method(payment_method: str) -> PaymentProvider:
    """The provider that takes ``payment_method`` (e.g. card -> stripe), if it is enabled."""
    for name in settings.BILLING_PROVIDERS:
        provider = provider_get(name)
        if provider.payment_method == payment_method:
            if not provider.is_available():
                raise PaymentMethodUnavailable(
                    "This payment method is not available right now.",
                    payment_method=payment_method,
                )
            return provider
    raise PaymentMethodUnavailable(payment_method=payment_method)
