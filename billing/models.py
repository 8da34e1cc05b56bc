"""Top-ups: what customers can buy, the orders they place, the provider's webhooks, refunds.

Only ``billing.services`` writes these rows (the admin edits packages and bonus rules).
Credits move only through ``wallet.services``; an order records which lots it granted.

Lock order (after the wallet's own): webhook event -> refund -> order -> wallet -> lots.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone


def _default_currency() -> str:
    return str(settings.BILLING_CURRENCY)


class TopUpPackage(models.Model):
    """A preset the console offers: a named package (Starter, Pro, ...) or a preset amount
    ($10, $20, ...). Credits are never stored here: they are quoted by the same formula as a
    custom amount (``billing.pricing``), so a change of rate or bonus rules applies to all."""

    class Kind(models.TextChoices):
        PACKAGE = "package", "Package"
        AMOUNT = "amount", "Preset amount"

    code = models.SlugField(max_length=40, unique=True, help_text="Stable id used by the API.")
    name = models.CharField(max_length=80)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PACKAGE)
    description = models.CharField(max_length=200, blank=True)
    amount_minor = models.PositiveBigIntegerField(help_text="Price in minor units (cents).")
    currency = models.CharField(max_length=3, default=_default_currency)
    is_active = models.BooleanField(default=True)
    sort_order = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("kind", "sort_order", "amount_minor")
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="package_amount_gt_0"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.amount_minor / 100:.2f} {self.currency.upper()})"

    def clean(self) -> None:
        self.currency = (self.currency or "").lower()


class BonusRule(models.Model):
    """Bonus credits for a paid amount: ``percent`` of the base credits when the amount (minor
    units, both ends inclusive) falls in [min_amount_minor, max_amount_minor]. Active rules
    of one currency must not overlap; an amount no rule covers earns no bonus."""

    currency = models.CharField(max_length=3, default=_default_currency)
    min_amount_minor = models.PositiveBigIntegerField(help_text="Inclusive, in cents.")
    max_amount_minor = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Inclusive, in cents; empty means no upper bound."
    )
    percent = models.DecimalField(
        max_digits=6,
        decimal_places=3,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(100))],
        help_text="Bonus as a percentage of the base credits, e.g. 3 or 12.5.",
    )
    is_active = models.BooleanField(default=True)
    note = models.CharField(max_length=120, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("currency", "min_amount_minor")
        constraints = [
            models.CheckConstraint(
                condition=Q(percent__gte=0) & Q(percent__lte=100), name="bonus_percent_range"
            ),
            models.CheckConstraint(
                condition=Q(max_amount_minor__isnull=True)
                | Q(max_amount_minor__gte=models.F("min_amount_minor")),
                name="bonus_range_ordered",
            ),
        ]

    def __str__(self) -> str:
        upper = "and above" if self.max_amount_minor is None else f"to {self.max_amount_minor}"
        return f"{self.percent}% from {self.min_amount_minor} {upper} ({self.currency})"

    def overlaps(self, other: BonusRule) -> bool:
        top = self.max_amount_minor
        other_top = other.max_amount_minor
        return (top is None or other.min_amount_minor <= top) and (
            other_top is None or self.min_amount_minor <= other_top
        )

    def clean(self) -> None:
        self.currency = (self.currency or "").lower()
        if self.max_amount_minor is not None and self.max_amount_minor < self.min_amount_minor:
            raise ValidationError({"max_amount_minor": "The range ends before it starts."})
        if not self.is_active:
            return
        others = BonusRule.objects.filter(currency=self.currency, is_active=True).exclude(
            pk=self.pk
        )
        clash = next((rule for rule in others if self.overlaps(rule)), None)
        if clash is not None:
            raise ValidationError(f"This range overlaps the active rule “{clash}”.")


class TopUpOrder(models.Model):
    """One purchase of credits. Base and bonus credits are quoted at creation and frozen
    here; they are granted only on completion, exactly once, as a paid lot and a bonus lot
    that reference this order."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PAID = "paid", "Paid"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        REFUNDED = "refunded", "Refunded"
        PARTIALLY_REFUNDED = "partially_refunded", "Partially refunded"

    # The state machine; every status change goes through billing.services._transition.
    # A failed order may still be paid: Stripe Checkout lets the customer retry a declined
    # card in the same session. A cancelled one may be paid only by a late payment, which
    # flags it for staff instead of granting credits.
    TRANSITIONS: ClassVar[dict[str, set[str]]] = {
        Status.PENDING: {Status.PAID, Status.FAILED, Status.CANCELLED},
        Status.FAILED: {Status.PAID, Status.CANCELLED},
        Status.CANCELLED: {Status.PAID},
        Status.PAID: {Status.COMPLETED, Status.PARTIALLY_REFUNDED, Status.REFUNDED},
        Status.COMPLETED: {Status.PARTIALLY_REFUNDED, Status.REFUNDED},
        Status.PARTIALLY_REFUNDED: {Status.PARTIALLY_REFUNDED, Status.REFUNDED},
        Status.REFUNDED: set(),
    }
    OPEN_STATUSES: ClassVar[set[str]] = {Status.PENDING, Status.FAILED}
    REFUNDABLE_STATUSES: ClassVar[set[str]] = {Status.COMPLETED, Status.PARTIALLY_REFUNDED}

    class PaymentMethod(models.TextChoices):
        CARD = "card", "Card (Stripe Checkout)"
        BANK_TRANSFER = "bank_transfer", "Bank transfer"

    order_no = models.CharField(max_length=24, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="topup_orders"
    )
    wallet = models.ForeignKey(
        "wallet.Wallet", on_delete=models.PROTECT, related_name="topup_orders"
    )
    package = models.ForeignKey(
        TopUpPackage, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders"
    )
    amount_minor = models.BigIntegerField(help_text="Price in minor units (cents).")
    currency = models.CharField(max_length=3)
    payment_method = models.CharField(max_length=24, choices=PaymentMethod.choices)
    provider = models.CharField(max_length=24)
    provider_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    provider_payment_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    checkout_url = models.TextField(blank=True)
    checkout_expires_at = models.DateTimeField(null=True, blank=True)
    # The quote, frozen: the rate, the rule and the credits the customer was shown.
    credits_per_usd = models.DecimalField(max_digits=18, decimal_places=6)
    bonus_percent = models.DecimalField(max_digits=6, decimal_places=3, default=Decimal(0))
    bonus_rule = models.ForeignKey(
        BonusRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    base_micro = models.BigIntegerField(help_text="Paid credits granted on completion (µcr).")
    bonus_micro = models.BigIntegerField(default=0, help_text="Bonus credits (µcr).")
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(
        null=True, blank=True, help_text="When it failed or was cancelled."
    )
    updated_at = models.DateTimeField(auto_now=True)
    failure_reason = models.TextField(blank=True)
    # What the provider reported as paid (kept even when it does not match the order).
    paid_amount_minor = models.BigIntegerField(null=True, blank=True)
    paid_currency = models.CharField(max_length=3, blank=True)
    flagged_reason = models.TextField(
        blank=True, help_text="Set when a payment did not match; nothing is granted."
    )
    flagged_at = models.DateTimeField(null=True, blank=True)
    refunded_amount_minor = models.BigIntegerField(default=0)
    paid_lot = models.ForeignKey(
        "wallet.CreditLot", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    bonus_lot = models.ForeignKey(
        "wallet.CreditLot", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Staff member who confirmed a manual payment.",
    )
    client_key = models.CharField(
        max_length=200, blank=True, help_text="The creator's idempotency key, if any."
    )
    receipt_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        permissions = [
            ("refund_topuporder", "Can refund top-up orders"),
            ("confirm_topuporder", "Can confirm manual (bank transfer) payments"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="order_amount_gt_0"),
            models.CheckConstraint(condition=Q(base_micro__gt=0), name="order_base_gt_0"),
            models.CheckConstraint(condition=Q(bonus_micro__gte=0), name="order_bonus_gte_0"),
            models.CheckConstraint(
                condition=Q(refunded_amount_minor__gte=0)
                & (
                    Q(refunded_amount_minor__lte=models.F("amount_minor"))
                    | Q(refunded_amount_minor__lte=models.F("paid_amount_minor"))
                ),
                name="order_refunded_within_received",
            ),
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        "pending",
                        "paid",
                        "completed",
                        "failed",
                        "cancelled",
                        "refunded",
                        "partially_refunded",
                    ]
                ),
                name="order_status_valid",
            ),
            models.CheckConstraint(
                condition=~Q(status__in=["completed", "partially_refunded", "refunded"])
                | Q(completed_at__isnull=False)
                | Q(paid_at__isnull=False),
                name="order_settled_has_time",
            ),
            models.UniqueConstraint(
                fields=["user", "client_key"],
                condition=~Q(client_key=""),
                name="order_client_key_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="order_user_created_idx"),
            models.Index(
                fields=["status", "created_at"],
                condition=Q(status__in=["pending", "failed"]),
                name="order_open_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.order_no

    @property
    def total_micro(self) -> int:
        return self.base_micro + self.bonus_micro

    @property
    def is_flagged(self) -> bool:
        return bool(self.flagged_reason)


class Refund(models.Model):
    """Money returned for an order, and the credits taken back for it.

    Written before the provider is called (status ``pending``, credits already taken back),
    so a crash between the provider and the database leaves a record that reconciliation
    finishes with the same provider idempotency key."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed (credits restored)"

    class Source(models.TextChoices):
        API = "api", "Staff API"
        ADMIN = "admin", "Admin"
        PROVIDER = "provider", "Made at the provider (e.g. Stripe dashboard)"

    order = models.ForeignKey(TopUpOrder, on_delete=models.PROTECT, related_name="refunds")
    idempotency_key = models.CharField(max_length=200, unique=True)
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    paid_micro = models.BigIntegerField(default=0, help_text="Paid credits taken back (µcr).")
    bonus_micro = models.BigIntegerField(default=0, help_text="Bonus credits taken back (µcr).")
    shortfall_micro = models.BigIntegerField(
        default=0,
        help_text="Credits a provider-side refund should have taken back but were already used.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    source = models.CharField(max_length=16, choices=Source.choices)
    reason = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    provider_refund_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="refund_amount_gt_0"),
            models.CheckConstraint(
                condition=Q(paid_micro__gte=0) & Q(bonus_micro__gte=0) & Q(shortfall_micro__gte=0),
                name="refund_credits_gte_0",
            ),
        ]
        indexes = [
            models.Index(
                fields=["created_at"], condition=Q(status="pending"), name="refund_pending_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"Refund {self.pk} of {self.order_id} ({self.status})"

    @property
    def credits_micro(self) -> int:
        return self.paid_micro + self.bonus_micro


class WebhookEvent(models.Model):
    """Every verified event a provider sent, stored once under its UNIQUE id."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored"
        FAILED = "failed", "Failed (will be retried)"

    DONE_STATUSES: ClassVar[set[str]] = {Status.PROCESSED, Status.IGNORED}

    provider = models.CharField(max_length=24)
    event_id = models.CharField(max_length=255)
    type = models.CharField(max_length=120)
    livemode = models.BooleanField(default=False)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    order = models.ForeignKey(
        TopUpOrder, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-received_at", "-id")
        constraints = [
            models.UniqueConstraint(fields=["provider", "event_id"], name="webhook_event_unique"),
        ]
        indexes = [
            models.Index(
                fields=["received_at"], condition=Q(status="failed"), name="webhook_failed_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.type} {self.event_id} ({self.status})"


class RecurringGrant(models.Model):
    """A plan-style allowance: ``credits_per_month`` granted to a wallet at the start of
    every calendar month (UTC) as an ``included`` lot that expires when the month ends.
    Unused included credits expire with their month; with a rollover cap, up to that many
    of them are granted again (as a second lot) in the next month. Exactly once per month:
    the grant's ledger entries are keyed ``recurring-grant:<id>:<YYYY-MM>``."""

    name = models.CharField(max_length=100)
    wallet = models.ForeignKey(
        "wallet.Wallet", on_delete=models.PROTECT, related_name="recurring_grants"
    )
    credits_per_month_micro = models.BigIntegerField(help_text="µcr granted each month.")
    rollover_cap_micro = models.BigIntegerField(
        default=0, help_text="Most unused µcr carried into the next month (0: none)."
    )
    starts_on = models.DateField(default=timezone.localdate, help_text="First month granted.")
    ends_on = models.DateField(null=True, blank=True, help_text="No grant after this day.")
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(credits_per_month_micro__gt=0), name="recurring_grant_amount_gt_0"
            ),
            models.CheckConstraint(
                condition=Q(rollover_cap_micro__gte=0), name="recurring_grant_rollover_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.wallet})"
