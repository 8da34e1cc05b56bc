"""Reads of the billing app. Other apps (referrals, the console) read top-ups only here."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import QuerySet

from billing.errors import PaymentMethodUnavailable, TopUpOrderNotFound
from billing.models import BonusRule, Refund, TopUpOrder, TopUpPackage
from billing.providers import provider_get


def user_has_completed_topup(*, user: Any) -> bool:
    """Whether the user has paid for at least one top-up that completed and was not fully
    refunded (what an invite reward waits for)."""
    return TopUpOrder.objects.filter(
        user=user,
        status__in=[TopUpOrder.Status.COMPLETED, TopUpOrder.Status.PARTIALLY_REFUNDED],
    ).exists()


def topup_order_get(*, order_no: str, user: Any = None) -> TopUpOrder:
    """One order by its number; with ``user``, only if it is theirs (anything else is
    reported as not found, so order numbers of other customers reveal nothing)."""
    orders = TopUpOrder.objects.select_related("package", "wallet")
    if user is not None:
        orders = orders.filter(user=user)
    order = orders.filter(order_no=str(order_no)[:24]).first()
    if order is None:
        raise TopUpOrderNotFound(order_no=str(order_no)[:24])
    return order


def topup_order_get_by_id(*, order_id: int) -> TopUpOrder | None:
    return TopUpOrder.objects.select_related("user", "wallet").filter(pk=order_id).first()


def topup_order_list_for_user(
    *,
    user: Any,
    status: str | list[str] | None = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    payment_method: str | None = None,
) -> QuerySet[TopUpOrder]:
    """The user's orders, newest first; ``created_after`` inclusive, ``created_before``
    exclusive."""
    orders = TopUpOrder.objects.filter(user=user).select_related("package")
    if payment_method:
        orders = orders.filter(payment_method=payment_method)
    if status:
        orders = orders.filter(status__in=[status] if isinstance(status, str) else status)
    if created_after is not None:
        orders = orders.filter(created_at__gte=created_after)
    if created_before is not None:
        orders = orders.filter(created_at__lt=created_before)
    return orders.order_by("-created_at", "-id")


def refund_list_for_order(*, order: TopUpOrder) -> QuerySet[Refund]:
    return Refund.objects.filter(order=order).order_by("created_at", "id")


def package_list_active(*, currency: str | None = None) -> QuerySet[TopUpPackage]:
    packages = TopUpPackage.objects.filter(is_active=True)
    if currency:
        packages = packages.filter(currency=currency)
    return packages.order_by("kind", "sort_order", "amount_minor")


def bonus_rule_list_active(*, currency: str) -> QuerySet[BonusRule]:
    return BonusRule.objects.filter(currency=currency, is_active=True).order_by("min_amount_minor")


def topup_order_first_completed(*, user: Any) -> TopUpOrder | None:
    """The user's first top-up that completed (credits granted), whether or not it was
    refunded later (what a "first top-up" invite reward is paid on)."""
    return (
        TopUpOrder.objects.filter(user=user, completed_at__isnull=False)
        .order_by("completed_at", "id")
        .first()
    )


def topup_order_ids_settled_since(*, since: dt.datetime, user_ids: Any = None) -> list[int]:
    """Ids of orders paid and completed since ``since`` (including those refunded since),
    optionally only of ``user_ids`` (a list or a values queryset) — for catch-up sweeps of
    work that follows a completion."""
    orders = TopUpOrder.objects.filter(
        completed_at__gte=since,
        status__in=[
            TopUpOrder.Status.COMPLETED,
            TopUpOrder.Status.PARTIALLY_REFUNDED,
            TopUpOrder.Status.REFUNDED,
        ],
    )
    if user_ids is not None:
        orders = orders.filter(user_id__in=user_ids)
    return list(orders.order_by("id").values_list("id", flat=True))


def topup_order_instructions(*, order: TopUpOrder) -> str:
    """How to pay a pending order of a provider staff confirm (bank transfer details);
    empty for anything else."""
    if order.status != TopUpOrder.Status.PENDING:
        return ""
    try:
        provider = provider_get(order.provider)
    except PaymentMethodUnavailable:  # a provider since removed from settings
        return ""
    if provider.confirms_automatically:
        return ""
    return provider.checkout_start(order=order).instructions
