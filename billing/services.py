"""Writes of the billing app: orders, payments, webhooks, reconciliation, refunds.

Guarantees kept here:

* Credits are granted only when an order completes, exactly once: a paid lot and a bonus lot
  written by ``wallet.services.wallet_credit`` under keys derived from the order number
  (``topup:<order_no>:paid`` / ``:bonus``), in the transaction that marks it completed.
* Every status change goes through ``_transition`` (``TopUpOrder.TRANSITIONS``) on an order
  row locked with ``SELECT ... FOR UPDATE``, so webhooks delivered twice, out of order or
  concurrently, reconciliation and staff actions all serialize on the order.
* A payment whose amount or currency differs from the order, or that arrives for a cancelled
  order, is recorded and flagged; nothing is granted.
* Payment providers are never called inside a database transaction: the order is committed
  first, the provider called, and its answer recorded in a new transaction.
* A refund takes the credits back (``lots_reverse``) and records itself as ``pending`` before
  the provider is called; a definite refusal restores the credits, an unknown outcome is
  retried by reconciliation with the same provider idempotency key.

Lock order: webhook event -> refund -> order -> wallet -> lots.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.template.loader import render_to_string
from django.utils import timezone

from accounts import selectors as account_selectors
from billing import pricing
from billing.errors import (
    InvalidOrderTransition,
    InvalidTopUpAmount,
    OrderNotReady,
    OrderNotRefundable,
    PaymentMethodUnavailable,
    PaymentProviderError,
    PaymentProviderUnavailable,
    RefundExceedsRefundable,
    RefundFailed,
    TopUpNotAllowed,
    UnknownPackage,
    UnsupportedCurrency,
)
from billing.models import Refund, TopUpOrder, TopUpPackage, WebhookEvent
from billing.providers import (
    PaymentNotice,
    PaymentProvider,
    provider_for_method,
    provider_get,
)
from billing.providers.base import NoticeKind
from config.errors import ApplicationError, IdempotencyConflict, ValidationFailed
from wallet import selectors as wallet_selectors
from wallet import services as wallet_services
from wallet.errors import IdempotencyKeyRequired, WalletClosed
from wallet.models import CreditLot, LedgerEntry, Wallet

logger = logging.getLogger(__name__)

Status = TopUpOrder.Status
Category = CreditLot.Category
ORDER_REFERENCE = "billing.topuporder"

# Crockford's base32: no I, L, O or U, so an order number read out on the phone is unambiguous.
_ORDER_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _new_order_no(now: dt.datetime) -> str:
    suffix = "".join(secrets.choice(_ORDER_ALPHABET) for _ in range(8))
    return f"TU-{now:%y%m%d}-{suffix}"


def _lock_order(order_id: int) -> TopUpOrder:
    return TopUpOrder.objects.select_for_update().get(pk=order_id)


def _transition(order: TopUpOrder, to: str) -> None:
    """Move a locked order to ``to`` if the state machine allows it."""
    if to not in TopUpOrder.TRANSITIONS[order.status]:
        raise InvalidOrderTransition(order_no=order.order_no, status=order.status, to=to)
    order.status = to


def _after_commit(task_name: str, *args: int) -> None:
    """Enqueue a follow-up task once the transaction commits. Robust: a broker outage must
    not turn a committed payment into an error response (the task is idempotent and the
    state it needs is in the database)."""

    def enqueue() -> None:
        from billing import tasks

        getattr(tasks, task_name).delay(*args)

    transaction.on_commit(enqueue, robust=True)


# --- Quotes and packages ------------------------------------------------------------------


def topup_quote(
    *, amount: object = None, package_code: str | None = None, currency: object = None
) -> tuple[pricing.Quote, TopUpPackage | None]:
    """Base and bonus credits for a package or a custom amount (in major units, e.g.
    ``"100"``). Custom amounts must lie within TOPUP_MIN_AMOUNT..TOPUP_MAX_AMOUNT."""
    code = (package_code or "").strip()
    has_amount = amount is not None and str(amount).strip() != ""
    if code and has_amount:
        raise ValidationFailed("Give either a package or an amount, not both.")
    currency_code = pricing.currency_clean(currency)
    package = None
    if code:
        package = TopUpPackage.objects.filter(code=code, is_active=True).first()
        if package is None:
            raise UnknownPackage(package=code[:40])
        if package.currency != currency_code:
            raise UnsupportedCurrency(currency=package.currency, supported=[currency_code])
        amount_minor = package.amount_minor
    else:
        amount_minor = pricing.parse_amount(amount)
        pricing.custom_amount_check(amount_minor)
    return pricing.quote(amount_minor=amount_minor, currency=currency_code), package


# --- Orders ---------------------------------------------------------------------------------


def _wallet_for(*, user: Any, organization: Any) -> Wallet:
    if organization is None:
        return wallet_selectors.wallet_get_for_user(user=user)
    membership = account_selectors.membership_get(organization=organization, user=user)
    if membership is None or not membership.can_manage:
        raise TopUpNotAllowed("Only owners and admins can top up an organization's wallet.")
    return wallet_selectors.wallet_get_for_organization(organization=organization)


def _order_replay(
    order: TopUpOrder, *, wallet: Wallet, quote: pricing.Quote, provider: PaymentProvider
) -> TopUpOrder:
    same = (
        order.wallet_id == wallet.pk
        and order.amount_minor == quote.amount_minor
        and order.currency == quote.currency
        and order.provider == provider.name
    )
    if not same:
        raise IdempotencyConflict(idempotency_key=order.client_key, order_no=order.order_no)
    return _checkout_open(order=order, provider=provider)


def topup_order_create(
    *,
    user: Any,
    amount: object = None,
    package_code: str | None = None,
    currency: object = None,
    payment_method: str = TopUpOrder.PaymentMethod.CARD,
    organization: Any = None,
    client_key: str = "",
) -> TopUpOrder:
    """Create a pending order with its quote frozen, commit it, then open the provider's
    checkout (a Stripe Checkout Session) and record it.

    Idempotent per ``client_key`` (the caller's Idempotency-Key): the same key returns the
    same order and the same checkout; with different parameters it is refused. Must be
    called outside a transaction (the provider call is refused inside one)."""
    client_key = _clean_key(client_key, required=False)
    provider = provider_for_method(payment_method)
    wallet = _wallet_for(user=user, organization=organization)
    quote, package = topup_quote(amount=amount, package_code=package_code, currency=currency)
    if client_key:
        existing = TopUpOrder.objects.filter(user=user, client_key=client_key).first()
        if existing is not None:
            return _order_replay(existing, wallet=wallet, quote=quote, provider=provider)
    now = timezone.now()
    for attempt in range(5):
        try:
            with transaction.atomic():
                order = TopUpOrder.objects.create(
                    order_no=_new_order_no(now),
                    user=user,
                    wallet=wallet,
                    package=package,
                    amount_minor=quote.amount_minor,
                    currency=quote.currency,
                    payment_method=provider.payment_method,
                    provider=provider.name,
                    credits_per_usd=quote.credits_per_usd,
                    bonus_percent=quote.bonus_percent,
                    bonus_rule_id=quote.bonus_rule_id,
                    base_micro=quote.base_micro,
                    bonus_micro=quote.bonus_micro,
                    client_key=client_key,
                    created_at=now,
                )
            break
        except IntegrityError:
            if client_key:
                existing = TopUpOrder.objects.filter(user=user, client_key=client_key).first()
                if existing is not None:  # the same request, concurrently
                    return _order_replay(existing, wallet=wallet, quote=quote, provider=provider)
            if attempt == 4:
                raise
    return _checkout_open(order=order, provider=provider)


def _checkout_open(*, order: TopUpOrder, provider: PaymentProvider) -> TopUpOrder:
    """Open (or re-open, idempotently) the provider's checkout for a committed order."""
    needs_session = (
        provider.confirms_automatically
        and order.status == Status.PENDING
        and not order.provider_session_id
    )
    if not needs_session:
        return order
    try:
        start = provider.checkout_start(order=order)
    except PaymentProviderError as exc:
        with transaction.atomic():
            locked = _lock_order(order.pk)
            if locked.status == Status.PENDING and not locked.provider_session_id:
                _transition(locked, Status.FAILED)
                locked.failure_reason = exc.message
                locked.closed_at = timezone.now()
                locked.save()
        raise
    # PaymentProviderUnavailable propagates: the order stays pending without a session; a
    # retry with the same key re-opens the same session (the provider call is idempotent),
    # and reconciliation cancels the order if nobody comes back.
    with transaction.atomic():
        locked = _lock_order(order.pk)
        if not locked.provider_session_id:
            locked.provider_session_id = start.session_id
            locked.checkout_url = start.url
            locked.checkout_expires_at = start.expires_at
            locked.save(
                update_fields=[
                    "provider_session_id",
                    "checkout_url",
                    "checkout_expires_at",
                    "updated_at",
                ]
            )
    return locked


def order_cancel(*, order: TopUpOrder, reason: str = "Cancelled by the customer.") -> TopUpOrder:
    """Cancel an order that has not been paid. The provider's checkout is closed first
    (outside any transaction); if it turns out to have been paid meanwhile, the payment is
    applied instead and the order is returned as it then stands."""
    if order.status not in TopUpOrder.OPEN_STATUSES:
        raise InvalidOrderTransition(
            "Only pending or failed orders can be cancelled.",
            order_no=order.order_no,
            status=order.status,
        )
    provider = provider_get(order.provider)
    notice = provider.checkout_cancel(order=order)
    with transaction.atomic():
        if notice is not None and notice.kind in (NoticeKind.PAID, NoticeKind.PROCESSING):
            notice_apply(provider=provider.name, notice=notice)
            return TopUpOrder.objects.get(pk=order.pk)
        locked = _lock_order(order.pk)
        if locked.status in TopUpOrder.OPEN_STATUSES:
            _close(locked, to=Status.CANCELLED, reason=reason)
            locked.save()
        return locked


def _close(order: TopUpOrder, *, to: str, reason: str) -> None:
    _transition(order, to)
    order.failure_reason = reason[:2000]
    order.closed_at = timezone.now()


def order_confirm_manual_payment(
    *, order: TopUpOrder, actor: Any, amount_minor: int | None = None
) -> TopUpOrder:
    """Staff confirm that a bank transfer for a manual order arrived. ``amount_minor`` is
    what arrived (default: the order's amount); a different amount flags the order instead
    of granting credits, exactly as for a provider's payment."""
    if actor is None or not actor.has_perm("billing.confirm_topuporder"):
        raise TopUpNotAllowed("Confirming payments requires the billing confirm permission.")
    provider = provider_get(order.provider)
    if provider.confirms_automatically:
        raise PaymentMethodUnavailable(
            f"{provider.name} orders are confirmed by the provider, not by staff.",
            order_no=order.order_no,
        )
    notice = PaymentNotice(
        kind=NoticeKind.PAID,
        order_no=order.order_no,
        payment_id=f"manual-{order.order_no}",
        amount_minor=order.amount_minor if amount_minor is None else amount_minor,
        currency=order.currency,
    )
    with transaction.atomic():
        notice_apply(provider=provider.name, notice=notice, actor=actor)
        return TopUpOrder.objects.get(pk=order.pk)


# --- Applying what a provider says ------------------------------------------------------------


@dataclass(frozen=True)
class NoticeOutcome:
    status: str  # WebhookEvent.Status.PROCESSED or IGNORED
    order: TopUpOrder | None = None
    note: str = ""


def _order_for_notice(*, provider: str, notice: PaymentNotice) -> TopUpOrder | None:
    orders = TopUpOrder.objects.select_for_update().filter(provider=provider)
    for lookup in (
        {"provider_session_id": notice.session_id},
        {"provider_payment_id": notice.payment_id},
        {"order_no": notice.order_no},
    ):
        value = next(iter(lookup.values()))
        if value:
            order = orders.filter(**lookup).first()
            if order is not None:
                return order
    return None


def notice_apply(*, provider: str, notice: PaymentNotice, actor: Any = None) -> NoticeOutcome:
    """Apply one provider notice to its order (locked). Runs inside the caller's
    transaction; safe to repeat: a notice the order already reflects changes nothing."""
    order = _order_for_notice(provider=provider, notice=notice)
    if order is None:
        return NoticeOutcome(WebhookEvent.Status.IGNORED, None, "No order matches this event.")
    foreign = [
        f"{label} {theirs} is not the order's {ours}"
        for label, theirs, ours in (
            ("checkout session", notice.session_id, order.provider_session_id),
            ("payment", notice.payment_id, order.provider_payment_id),
        )
        if theirs and ours and theirs != ours
    ]
    now = timezone.now()
    if foreign and notice.kind != NoticeKind.PAID:
        return NoticeOutcome(WebhookEvent.Status.IGNORED, order, "; ".join(foreign))
    if notice.session_id and not order.provider_session_id:
        order.provider_session_id = notice.session_id
    if notice.payment_id and not order.provider_payment_id:
        order.provider_payment_id = notice.payment_id
    changed, note = True, ""
    kind = notice.kind
    if kind == NoticeKind.PAID:
        changed, note = _order_pay(order, notice=notice, actor=actor, problems=foreign, now=now)
    elif kind in (NoticeKind.FAILED, NoticeKind.EXPIRED) and order.status == Status.PENDING:
        if kind == NoticeKind.FAILED:
            _close(order, to=Status.FAILED, reason=notice.failure_reason or "Payment failed.")
        else:
            _close(order, to=Status.CANCELLED, reason="The checkout expired unpaid.")
    elif kind == NoticeKind.REFUNDED:
        changed, note = _order_refunded_at_provider(order, notice=notice, now=now)
    elif kind in (NoticeKind.FAILED, NoticeKind.EXPIRED):
        changed, note = False, f"The order is {order.status}; the {kind} notice changes nothing."
    else:
        changed, note = False, f"The payment is {kind}; nothing to do yet."
    order.save()
    status = WebhookEvent.Status.PROCESSED if changed else WebhookEvent.Status.IGNORED
    return NoticeOutcome(status, order, note)


def _order_pay(
    order: TopUpOrder,
    *,
    notice: PaymentNotice,
    actor: Any,
    problems: list[str],
    now: dt.datetime,
) -> tuple[bool, str]:
    if order.status not in (Status.PENDING, Status.FAILED, Status.CANCELLED):
        return False, f"The order is {order.status}; the payment was already recorded."
    order.paid_amount_minor = notice.amount_minor
    order.paid_currency = (notice.currency or "").lower()[:3]
    problems = list(problems)
    if notice.amount_minor != order.amount_minor or order.paid_currency != order.currency:
        problems.append(
            f"Paid {notice.amount_minor} {order.paid_currency or '?'} (minor units) but the "
            f"order is for {order.amount_minor} {order.currency}."
        )
    if order.status == Status.CANCELLED:
        problems.append("The payment arrived after the order was cancelled.")
    _transition(order, Status.PAID)
    order.paid_at = now
    order.confirmed_by = actor if getattr(actor, "pk", None) else None
    if problems:
        return True, _flag(order, " ".join(problems), now=now)
    return True, _order_complete(order, now=now)


def _flag(order: TopUpOrder, reason: str, *, now: dt.datetime) -> str:
    order.flagged_reason = (
        f"{order.flagged_reason}\n{reason}" if order.flagged_reason else reason
    )[:4000]
    order.flagged_at = now
    logger.warning("Top-up %s flagged: %s", order.order_no, reason)
    return f"Flagged: {reason}"


def _order_complete(order: TopUpOrder, *, now: dt.datetime) -> str:
    """Grant the frozen base and bonus credits, once, and complete the order."""
    reference = wallet_services.Ref.to(order)
    try:
        with transaction.atomic():  # both lots or neither
            granted = _grant_lots(order, reference=reference, now=now)
    except WalletClosed:
        return _flag(order, "The wallet is closed; no credits were granted.", now=now)
    order.paid_lot_id = granted[Category.PAID].lot_id
    order.bonus_lot_id = granted[Category.BONUS].lot_id if Category.BONUS in granted else None
    _transition(order, Status.COMPLETED)
    order.completed_at = now
    order.failure_reason = ""
    _after_commit("topup_completed_followups", order.pk)
    return "Completed; credits granted."


def _grant_lots(
    order: TopUpOrder, *, reference: wallet_services.Ref, now: dt.datetime
) -> dict[str, LedgerEntry]:
    """The paid lot and (if any) the bonus lot, keyed ``topup:<order_no>:<category>``."""
    return {
        category: wallet_services.wallet_credit(
            wallet=order.wallet_id,
            amount=amount,
            category=category,
            idempotency_key=f"topup:{order.order_no}:{category}",
            reference=reference,
            now=now,
        )
        for category, amount in (
            (Category.PAID, order.base_micro),
            (Category.BONUS, order.bonus_micro),
        )
        if amount
    }


# --- Refunds --------------------------------------------------------------------------------


def _order_lots(order: TopUpOrder) -> dict[str, list[CreditLot]]:
    lots = wallet_selectors.lot_list_for_reference(
        reference_type=ORDER_REFERENCE, reference_id=str(order.pk)
    )
    by_category: dict[str, list[CreditLot]] = {Category.PAID: [], Category.BONUS: []}
    for lot in lots:
        if lot.category in by_category:
            by_category[lot.category].append(lot)
    return by_category


def _refund_position(
    order: TopUpOrder, lots: Mapping[str, list[CreditLot]]
) -> pricing.RefundPosition:
    active = Refund.objects.filter(
        order=order, status__in=[Refund.Status.PENDING, Refund.Status.SUCCEEDED]
    ).aggregate(money=Sum("amount_minor"), paid=Sum("paid_micro"), bonus=Sum("bonus_micro"))
    granted = order.paid_lot_id is not None  # credits exist only for completed orders
    reversed_micro = int(active["paid"] or 0) + int(active["bonus"] or 0)
    return pricing.RefundPosition(
        amount_left_minor=order.amount_minor - int(active["money"] or 0),
        credits_left_micro=(order.total_micro - reversed_micro) if granted else 0,
        paid_unused_micro=sum(lot.remaining for lot in lots[Category.PAID]) if granted else 0,
        bonus_unused_micro=sum(lot.remaining for lot in lots[Category.BONUS]) if granted else 0,
        order_base_micro=order.base_micro,
        order_bonus_micro=order.bonus_micro,
    )


def _spread(lots: Iterable[CreditLot], amount: int) -> dict[int, int]:
    """Take ``amount`` from lots in order (oldest first)."""
    takes: dict[int, int] = {}
    for lot in lots:
        if amount <= 0:
            break
        take = min(lot.remaining, amount)
        if take:
            takes[lot.pk] = take
            amount -= take
    return takes


def _refund_write(
    *,
    order: TopUpOrder,
    lots: Mapping[str, list[CreditLot]],
    credits: pricing.RefundCredits,
    amount_minor: int,
    key: str,
    actor: Any,
    reason: str,
    **fields: Any,
) -> Refund:
    """Record a refund and take its credits back (``lots_reverse``: the paid part from the
    order's paid lots, the bonus part from its bonus lots, oldest first), in the caller's
    transaction with the order locked."""
    refund = Refund.objects.create(
        order=order,
        idempotency_key=key,
        amount_minor=amount_minor,
        currency=order.currency,
        paid_micro=credits.paid_micro,
        bonus_micro=credits.bonus_micro,
        shortfall_micro=credits.shortfall_micro,
        reason=reason[:2000],
        requested_by=actor,
        **fields,
    )
    takes = _spread(lots[Category.PAID], credits.paid_micro)
    takes.update(_spread(lots[Category.BONUS], credits.bonus_micro))
    if takes:
        wallet_services.lots_reverse(
            lots=[lot for group in lots.values() for lot in group if lot.pk in takes],
            amounts=takes,
            idempotency_key=f"topup-refund:{refund.pk}",
            reference=wallet_services.Ref.to(refund),
            kind=LedgerEntry.Kind.REFUND,
            actor=actor,
            reason=reason or f"Refund of top-up {order.order_no}",
        )
    return refund


def _received_minor(order: TopUpOrder) -> int:
    """The money actually received (differs from the price only on a flagged order)."""
    return order.amount_minor if order.paid_amount_minor is None else order.paid_amount_minor


def _record_refunded(order: TopUpOrder, refund: Refund) -> None:
    order.refunded_amount_minor += refund.amount_minor
    full = order.refunded_amount_minor >= _received_minor(order)
    _transition(order, Status.REFUNDED if full else Status.PARTIALLY_REFUNDED)
    _after_commit("topup_refunded_followups", order.pk, refund.pk)


def _order_refunded_at_provider(
    order: TopUpOrder, *, notice: PaymentNotice, now: dt.datetime
) -> tuple[bool, str]:
    """The provider reports money returned (cumulative). Refunds we made are already
    recorded; anything beyond them was made at the provider (e.g. in the Stripe dashboard):
    record it and take back the matching credits, as far as they are unused."""
    if order.status in (Status.PENDING, Status.FAILED):
        raise OrderNotReady(
            "A refund was reported before the payment; retried later.", order_no=order.order_no
        )
    known = (
        Refund.objects.filter(
            order=order, status__in=[Refund.Status.PENDING, Refund.Status.SUCCEEDED]
        ).aggregate(total=Sum("amount_minor"))["total"]
        or 0
    )
    total = min(int(notice.refunded_total_minor or 0), _received_minor(order))
    extra = total - known
    if extra <= 0:
        return False, "The refund is already recorded."
    lots = _order_lots(order)
    position = _refund_position(order, lots)
    credits = pricing.refund_credits(position, amount_minor=extra)
    refund = _refund_write(
        order=order,
        lots=lots,
        credits=credits,
        amount_minor=extra,
        key=f"provider-refund:{order.order_no}:{total}",
        actor=None,
        reason=f"Refunded at the payment provider (order {order.order_no}).",
        status=Refund.Status.SUCCEEDED,
        source=Refund.Source.PROVIDER,
        completed_at=now,
    )
    if credits.shortfall_micro:
        _flag(
            order,
            f"Refunded {pricing.format_minor(extra)} at the provider, but "
            f"{credits.shortfall_micro} µcr of the matching credits were already used.",
            now=now,
        )
    _record_refunded(order, refund)
    return True, f"Recorded a refund of {pricing.format_minor(extra)} made at the provider."


def _clean_key(key: str | None, *, required: bool) -> str:
    """A caller's idempotency key: stripped, at most 200 characters, maybe required."""
    key = (key or "").strip()
    if required and not key:
        raise IdempotencyKeyRequired()
    if len(key) > 200:
        raise IdempotencyKeyRequired("The idempotency key is longer than 200 characters.")
    return key


def _refund_replay(refund: Refund, *, order: TopUpOrder, amount_minor: int | None) -> Refund:
    if refund.order_id != order.pk or (
        amount_minor is not None and amount_minor != refund.amount_minor
    ):
        raise IdempotencyConflict(idempotency_key=refund.idempotency_key)
    if refund.status == Refund.Status.PENDING:
        return refund_submit(refund=refund)
    if refund.status == Refund.Status.FAILED:
        raise RefundFailed(refund_id=refund.pk, provider_error=refund.error)
    return refund


def refund_create(
    *,
    order: TopUpOrder,
    amount_minor: int | None,
    idempotency_key: str,
    actor: Any,
    reason: str = "",
    source: str = Refund.Source.API,
) -> Refund:
    """Refund ``amount_minor`` of a completed order (None: all that is refundable).

    The unused credits of the order are taken back in proportion (``billing.pricing``'s
    policy); a refund larger than the unused part is refused with
    ``refund_exceeds_refundable`` and changes nothing. Idempotent per key: a retry returns
    the first refund (and finishes it if it was interrupted)."""
    key = _clean_key(idempotency_key, required=True)
    if actor is None or not actor.has_perm("billing.refund_topuporder"):
        raise TopUpNotAllowed("Refunds require the billing refund permission.")
    if amount_minor is not None and (isinstance(amount_minor, bool) or amount_minor <= 0):
        raise InvalidTopUpAmount("The refund amount must be positive.")
    existing = Refund.objects.filter(idempotency_key=key).first()
    if existing is not None:
        return _refund_replay(existing, order=order, amount_minor=amount_minor)
    try:
        with transaction.atomic():
            locked = _lock_order(order.pk)
            if locked.status not in TopUpOrder.REFUNDABLE_STATUSES:
                raise OrderNotRefundable(order_no=locked.order_no, status=locked.status)
            lots = _order_lots(locked)
            position = _refund_position(locked, lots)
            refundable = pricing.refundable_minor(position)
            amount = refundable if amount_minor is None else amount_minor
            if amount <= 0 or amount > refundable:
                raise RefundExceedsRefundable(
                    refundable=pricing.format_minor(refundable),
                    refundable_minor=refundable,
                    requested_minor=amount,
                    currency=locked.currency,
                )
            credits = pricing.refund_credits(position, amount_minor=amount)
            refund = _refund_write(
                order=locked,
                lots=lots,
                credits=credits,
                amount_minor=amount,
                key=key,
                actor=actor,
                reason=reason,
                status=Refund.Status.PENDING,
                source=source,
            )
    except IntegrityError:
        existing = Refund.objects.filter(idempotency_key=key).first()
        if existing is None:
            raise
        return _refund_replay(existing, order=order, amount_minor=amount_minor)
    return refund_submit(refund=refund)


def refund_submit(*, refund: Refund) -> Refund:
    """Send a pending refund to the provider and record the answer. Safe to call again
    (reconciliation does, for refunds interrupted by a crash or an outage): the provider's
    idempotency key is the refund's id, so the money goes back once."""
    if refund.status != Refund.Status.PENDING:
        return refund
    order = refund.order
    provider = provider_get(order.provider)
    Refund.objects.filter(pk=refund.pk).update(attempts=F("attempts") + 1)
    try:
        result = provider.refund_create(
            order=order,
            amount_minor=refund.amount_minor,
            idempotency_key=f"refund-{refund.pk}",
            reason=refund.reason,
        )
    except PaymentProviderError as exc:
        _refund_fail(refund, error=exc.message)
        raise RefundFailed(refund_id=refund.pk, provider_error=exc.message) from exc
    except PaymentProviderUnavailable as exc:
        Refund.objects.filter(pk=refund.pk).update(error=exc.message)
        raise
    if result.status == "failed":
        _refund_fail(refund, error="The provider reported the refund as failed.")
        raise RefundFailed(refund_id=refund.pk)
    with transaction.atomic():
        locked = Refund.objects.select_for_update().get(pk=refund.pk)
        if locked.status != Refund.Status.PENDING:
            return locked
        order = _lock_order(locked.order_id)
        locked.status = Refund.Status.SUCCEEDED
        locked.provider_refund_id = result.refund_id
        locked.completed_at = timezone.now()
        locked.error = ""
        locked.save()
        _record_refunded(order, locked)
        order.save()
        locked.order = order
        return locked


def _refund_fail(refund: Refund, *, error: str) -> None:
    """The provider refused: give the credits taken back for this refund back (as new lots
    of the same categories that reference the order, so they stay refundable)."""
    with transaction.atomic():
        locked = Refund.objects.select_for_update().get(pk=refund.pk)
        if locked.status != Refund.Status.PENDING:
            return
        order = _lock_order(locked.order_id)
        reason = f"Refund {locked.pk} was refused by the payment provider; credits restored."
        restore = ((Category.PAID, locked.paid_micro), (Category.BONUS, locked.bonus_micro))
        for category, amount in restore:
            if amount:
                wallet_services.wallet_credit(
                    wallet=order.wallet_id,
                    amount=amount,
                    category=category,
                    kind=LedgerEntry.Kind.ADJUSTMENT,
                    idempotency_key=f"topup-refund:{locked.pk}:restore:{category}",
                    reference=wallet_services.Ref.to(order),
                    actor=locked.requested_by,
                    reason=reason,
                )
        locked.status = Refund.Status.FAILED
        locked.error = error[:2000]
        locked.completed_at = timezone.now()
        locked.save()
    refund.status = locked.status
    refund.error = locked.error


# --- Webhooks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookResult:
    event: WebhookEvent
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        return self.event.status in WebhookEvent.DONE_STATUSES


def webhook_receive(
    *, provider_name: str, payload: bytes, headers: Mapping[str, str]
) -> WebhookResult:
    """Verify a provider's webhook (raises ``WebhookSignatureInvalid`` before anything is
    stored), store it under its UNIQUE event id and process it."""
    provider = provider_get(provider_name)
    data = provider.webhook_event(payload=payload, headers=headers)
    WebhookEvent.objects.bulk_create(
        [
            WebhookEvent(
                provider=provider.name,
                event_id=str(data["id"])[:255],
                type=str(data["type"])[:120],
                livemode=bool(data.get("livemode")),
                payload=data,
            )
        ],
        ignore_conflicts=True,
    )
    event = WebhookEvent.objects.get(provider=provider.name, event_id=str(data["id"])[:255])
    return webhook_event_process(event_id=event.pk)


def webhook_event_process(*, event_id: int) -> WebhookResult:
    """Process a stored event once: the event row is locked, so concurrent deliveries of
    the same event wait and then see it done. A failure is stored on the event (status
    ``failed``, with the error) and retried by the next delivery or by reconciliation."""
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(pk=event_id)
        if event.status in WebhookEvent.DONE_STATUSES:
            return WebhookResult(event, duplicate=True)
        provider = provider_get(event.provider)
        event.attempts += 1
        try:
            with transaction.atomic():
                notice = provider.webhook_notice(event=event.payload)
                if notice is None:
                    outcome = NoticeOutcome(
                        WebhookEvent.Status.IGNORED, None, "Event type not handled."
                    )
                else:
                    outcome = notice_apply(provider=provider.name, notice=notice)
        except Exception as exc:
            if isinstance(exc, ApplicationError):
                logger.warning("Webhook event %s not applied: %s", event.event_id, exc)
            else:
                logger.exception("Webhook event %s failed", event.event_id)
            event.status = WebhookEvent.Status.FAILED
            event.error = f"{type(exc).__name__}: {exc}"[:2000]
        else:
            event.status = outcome.status
            event.error = outcome.note[:2000]
            event.order = outcome.order
            event.processed_at = timezone.now()
        event.save()
    return WebhookResult(event)


# --- Reconciliation -------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    checked: int = 0
    completed: int = 0
    cancelled: int = 0
    unchanged: int = 0
    errors: int = 0
    events_retried: int = 0
    refunds_retried: int = 0
    stopped_early: bool = False
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"checked {self.checked} orders: {self.completed} completed, "
            f"{self.cancelled} cancelled, {self.unchanged} unchanged, {self.errors} errors; "
            f"{self.events_retried} webhook events and {self.refunds_retried} refunds retried"
            + (" (stopped at the time limit)" if self.stopped_early else "")
        )


def order_sync(*, order: TopUpOrder) -> TopUpOrder:
    """Ask the order's provider where its payment stands and apply the answer (the same
    path a webhook takes). The provider is called outside any transaction."""
    provider = provider_get(order.provider)
    if not provider.confirms_automatically or order.status not in TopUpOrder.OPEN_STATUSES:
        return order
    if not order.provider_session_id:
        return order
    notice = provider.checkout_fetch(order=order)
    if notice is None:
        return order
    overdue = order.checkout_expires_at is not None and (
        order.checkout_expires_at < timezone.now() - dt.timedelta(minutes=5)
    )
    if notice.kind == NoticeKind.OPEN and overdue:
        # Past its expiry and still open: close it so it can no longer be paid.
        notice = provider.checkout_cancel(order=order) or notice
    with transaction.atomic():
        notice_apply(provider=provider.name, notice=notice)
    return TopUpOrder.objects.get(pk=order.pk)


def _cancel_stale(*, order_id: int, reason: str) -> bool:
    with transaction.atomic():
        locked = _lock_order(order_id)
        if locked.status != Status.PENDING or locked.provider_session_id:
            return False
        _close(locked, to=Status.CANCELLED, reason=reason)
        locked.save()
        return True


def payments_reconcile(
    *,
    now: dt.datetime | None = None,
    older_than_minutes: int | None = None,
    limit: int | None = None,
    time_budget_seconds: float = 200.0,
) -> ReconcileReport:
    """Settle what webhooks missed. Idempotent and safe to run concurrently or again:

    * orders pending (or failed, with a checkout that may still be paid) for longer than
      ``older_than_minutes``: asked about at the provider and completed or cancelled;
    * orders whose checkout never opened (crash or outage at creation): cancelled;
    * manual orders unpaid after BILLING_MANUAL_ORDER_TTL_DAYS: cancelled;
    * webhook events that failed or were never processed: processed again;
    * refunds interrupted between the provider and the database: sent again.

    Stops between items once ``time_budget_seconds`` is spent (the rest waits for the next
    run)."""
    now = now or timezone.now()
    minutes = (
        settings.BILLING_RECONCILE_AFTER_MINUTES
        if older_than_minutes is None
        else older_than_minutes
    )
    limit = limit or settings.BILLING_RECONCILE_BATCH_SIZE
    cutoff = now - dt.timedelta(minutes=minutes)
    deadline = time.monotonic() + time_budget_seconds
    report = ReconcileReport()
    automatic = [
        name for name in settings.BILLING_PROVIDERS if provider_get(name).confirms_automatically
    ]

    def out_of_time() -> bool:
        if time.monotonic() > deadline:
            report.stopped_early = True
        return report.stopped_early

    open_orders = TopUpOrder.objects.filter(provider__in=automatic, created_at__lte=cutoff).filter(
        Q(status=Status.PENDING)
        | Q(status=Status.FAILED, checkout_expires_at__gte=now - dt.timedelta(hours=1))
    )
    for order in open_orders.order_by("created_at")[:limit]:
        if out_of_time():
            break
        report.checked += 1
        try:
            if not order.provider_session_id:
                done = _cancel_stale(
                    order_id=order.pk, reason="The checkout could not be opened; nothing was paid."
                )
                after = Status.CANCELLED if done else order.status
            else:
                after = order_sync(order=order).status
        except Exception as exc:
            logger.exception("Reconciling %s failed", order.order_no)
            report.errors += 1
            report.messages.append(f"{order.order_no}: {type(exc).__name__}: {exc}")
            continue
        if after == order.status:
            report.unchanged += 1
        elif after == Status.COMPLETED:
            report.completed += 1
        elif after == Status.CANCELLED:
            report.cancelled += 1
        report.messages.append(f"{order.order_no}: {order.status} -> {after}")

    manual_cutoff = now - dt.timedelta(days=settings.BILLING_MANUAL_ORDER_TTL_DAYS)
    stale_manual = TopUpOrder.objects.filter(
        status=Status.PENDING, created_at__lte=manual_cutoff
    ).exclude(provider__in=automatic)
    for order_id in stale_manual.values_list("id", flat=True)[:limit]:
        if out_of_time():
            break
        if _cancel_stale(order_id=order_id, reason="No payment arrived in time."):
            report.cancelled += 1

    retry_events = WebhookEvent.objects.filter(
        Q(status=WebhookEvent.Status.FAILED, attempts__lt=settings.BILLING_WEBHOOK_MAX_ATTEMPTS)
        | Q(status=WebhookEvent.Status.RECEIVED, received_at__lte=now - dt.timedelta(minutes=1))
    )
    for event_id in retry_events.order_by("received_at").values_list("id", flat=True)[:limit]:
        if out_of_time():
            break
        webhook_event_process(event_id=event_id)
        report.events_retried += 1

    pending_refunds = Refund.objects.filter(
        status=Refund.Status.PENDING, created_at__lte=now - dt.timedelta(minutes=1)
    ).select_related("order")
    for refund in pending_refunds.order_by("created_at")[:limit]:
        if out_of_time():
            break
        report.refunds_retried += 1
        try:
            refund_submit(refund=refund)
        except (PaymentProviderUnavailable, RefundFailed) as exc:
            report.errors += 1
            report.messages.append(f"refund {refund.pk}: {exc.code}")
    return report


# --- Notifications --------------------------------------------------------------------------


def _claim(model: Any, pk: int, field_name: str, **conditions: Any) -> bool:
    """Mark a notification as sent before sending it, so two workers never both send."""
    return bool(
        model.objects.filter(pk=pk, **{f"{field_name}__isnull": True}, **conditions).update(
            **{field_name: timezone.now()}
        )
    )


def _send(*, template: str, subject: str, to: str, context: dict[str, Any]) -> None:
    body = render_to_string(template, {**context, "site_url": settings.SITE_URL})
    send_mail(subject, body, None, [to])


def topup_receipt_send(*, order_id: int) -> bool:
    """Email the receipt of a completed top-up, at most once. Returns whether it was sent."""
    if not _claim(TopUpOrder, order_id, "receipt_sent_at", completed_at__isnull=False):
        return False
    order = TopUpOrder.objects.select_related("user").get(pk=order_id)
    try:
        _send(
            template="billing/email/receipt.txt",
            subject=f"Receipt for your top-up {order.order_no}",
            to=order.user.email,
            context={"order": order, "amount": pricing.format_minor(order.amount_minor)},
        )
    except Exception:
        TopUpOrder.objects.filter(pk=order_id).update(receipt_sent_at=None)
        raise
    return True


def refund_notice_send(*, refund_id: int) -> bool:
    """Email the confirmation of a refund, at most once."""
    if not _claim(Refund, refund_id, "notified_at", status=Refund.Status.SUCCEEDED):
        return False
    refund = Refund.objects.select_related("order", "order__user").get(pk=refund_id)
    try:
        _send(
            template="billing/email/refund.txt",
            subject=f"Refund for your top-up {refund.order.order_no}",
            to=refund.order.user.email,
            context={
                "refund": refund,
                "order": refund.order,
                "amount": pricing.format_minor(refund.amount_minor),
            },
        )
    except Exception:
        Refund.objects.filter(pk=refund_id).update(notified_at=None)
        raise
    return True


# --- Recurring grants (plan allowances) ------------------------------------------------------


def _month_bounds(now: dt.datetime) -> tuple[dt.date, dt.datetime, dt.date]:
    """(first day of now's UTC month, the month's end as a datetime, previous month)."""
    month = now.astimezone(dt.UTC).date().replace(day=1)
    next_month = (month + dt.timedelta(days=32)).replace(day=1)
    previous = (month - dt.timedelta(days=1)).replace(day=1)
    return month, dt.datetime.combine(next_month, dt.time.min, tzinfo=dt.UTC), previous


def recurring_grant_apply(*, grant: Any, now: dt.datetime | None = None) -> list[LedgerEntry]:
    """Grant this month's credits of one recurring grant, once. Returns the entries written
    now (empty when the month was granted already or the grant is not in effect).

    Months are calendar months in UTC; a month that passed without a run is not granted
    afterwards (its credits would already have expired). Rollover: the previous month's
    included lots are expired first (``lots_expire``), then up to ``rollover_cap_micro`` of
    what expired from them is granted again, expiring at this month's end."""
    from billing.models import RecurringGrant

    now = now or timezone.now()
    month, month_end, previous = _month_bounds(now)
    grant = RecurringGrant.objects.get(pk=grant.pk)
    today = now.astimezone(dt.UTC).date()
    if not grant.is_active or grant.starts_on > today:
        return []
    if grant.ends_on is not None and grant.ends_on < month:
        return []
    key = f"recurring-grant:{grant.pk}:{month:%Y-%m}"
    if LedgerEntry.objects.filter(idempotency_key=key).exists():
        return []
    reference = wallet_services.Ref.to(grant)
    rollover = 0
    if grant.rollover_cap_micro:
        wallet_services.lots_expire(wallet=grant.wallet_id, now=now)
        prev_key = f"recurring-grant:{grant.pk}:{previous:%Y-%m}"
        prev_lots = list(
            LedgerEntry.objects.filter(
                idempotency_key__in=[prev_key, f"{prev_key}:rollover"], lot__isnull=False
            ).values_list("lot_id", flat=True)
        )
        expired = -(
            LedgerEntry.objects.filter(
                idempotency_key__in=[f"lot-expiry:{lot_id}" for lot_id in prev_lots]
            ).aggregate(total=Sum("amount"))["total"]
            or 0
        )
        rollover = min(expired, grant.rollover_cap_micro)
    entries = []
    with transaction.atomic():
        entries.append(
            wallet_services.wallet_credit(
                wallet=grant.wallet_id,
                amount=grant.credits_per_month_micro,
                category=CreditLot.Category.INCLUDED,
                idempotency_key=key,
                reference=reference,
                expires_at=month_end,
                reason=f"{grant.name}, {month:%B %Y}",
                now=now,
            )
        )
        if rollover > 0:
            entries.append(
                wallet_services.wallet_credit(
                    wallet=grant.wallet_id,
                    amount=rollover,
                    category=CreditLot.Category.INCLUDED,
                    idempotency_key=f"{key}:rollover",
                    reference=reference,
                    expires_at=month_end,
                    reason=f"{grant.name}, rolled over from {previous:%B %Y}",
                    now=now,
                )
            )
    return entries


def recurring_grants_run(*, now: dt.datetime | None = None) -> int:
    """Apply every active recurring grant for the current month. Idempotent: run it as often
    as you like (beat runs it hourly). Returns how many grants were applied now."""
    from billing.models import RecurringGrant

    now = now or timezone.now()
    applied = 0
    grants = RecurringGrant.objects.filter(is_active=True).order_by("id")
    for grant in grants.iterator():
        try:
            if recurring_grant_apply(grant=grant, now=now):
                applied += 1
        except ApplicationError as exc:  # a closed wallet, say: the others still run
            logger.warning("recurring grant %s not applied: %s", grant.pk, exc.message)
    return applied
