"""The ledger. Only ``wallet.services`` writes to these tables.

Invariants (DESIGN.md; checked by ``manage.py wallet_verify``):

1. ``Wallet.balance == sum(lot.remaining) == sum(entry.amount)`` for every wallet.
2. ``balance >= 0`` and ``held >= 0`` (CHECK constraints); ``available = balance - held``.
3. Ledger entries are append-only (a PostgreSQL trigger refuses UPDATE and DELETE).
4. Every entry has a kind and a reference; staff entries have an actor and a reason.
5. Every entry has a UNIQUE idempotency key, written in the transaction of its effect.
6. Debits burn lots in one fixed order (``lot_burn_order``).

Lock order everywhere: API token, membership, hold, wallet, lots.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from config.models import AppendOnly


class Wallet(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        CLOSED = "closed", "Closed"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="wallet",
    )
    organization = models.OneToOneField(
        "accounts.Organization",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="wallet",
    )
    balance = models.BigIntegerField(default=0, help_text="µcr; equals the sum of lots.")
    held = models.BigIntegerField(default=0, help_text="µcr reserved by active holds.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Earliest expiry among lots with credits left. It may be stale-early (a lot was used up
    # since), never stale-late, so "next_expiry_at > now" proves no lot is due to expire.
    next_expiry_at = models.DateTimeField(null=True, blank=True)
    # Low-balance alerting: the owner's threshold (empty = LOW_BALANCE_THRESHOLD_CREDITS), and
    # when the alert for the current dip was sent (empty = armed: the next crossing below the
    # threshold alerts; set back to empty once the balance is above the threshold again).
    low_balance_threshold_micro = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Warn below this many µcr; empty uses the site default.",
    )
    low_balance_alerted_at = models.DateTimeField(null=True, blank=True)
    # Fewer available credits than this and no new request may start (an authorization is
    # refused with limit_source minimum_balance); empty uses METERING_MIN_BALANCE_CREDITS.
    min_balance_micro = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Refuse new requests below this many available µcr; empty uses the site default.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(balance__gte=0), name="wallet_balance_gte_0"),
            models.CheckConstraint(condition=Q(held__gte=0), name="wallet_held_gte_0"),
            models.CheckConstraint(
                condition=Q(low_balance_threshold_micro__isnull=True)
                | Q(low_balance_threshold_micro__gte=0),
                name="wallet_threshold_gte_0",
            ),
            models.CheckConstraint(
                condition=Q(min_balance_micro__isnull=True) | Q(min_balance_micro__gte=0),
                name="wallet_min_balance_gte_0",
            ),
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(organization__isnull=True))
                | (Q(user__isnull=True) & Q(organization__isnull=False)),
                name="wallet_exactly_one_owner",
            ),
        ]

    def __str__(self) -> str:
        owner = self.user if self.user_id else self.organization
        return f"Wallet {self.pk} of {owner}"

    @property
    def available(self) -> int:
        return self.balance - self.held

    @property
    def owner_label(self) -> str:
        return str(self.user if self.user_id else self.organization)


class CreditLot(models.Model):
    """A grant of credits: what it was, how much is left, when it expires."""

    class Category(models.TextChoices):
        PAID = "paid", "Paid"
        BONUS = "bonus", "Bonus"
        PROMOTIONAL = "promotional", "Promotional"
        REDEMPTION = "redemption", "Redemption"
        REFERRAL = "referral", "Referral"
        ADJUSTMENT = "adjustment", "Adjustment"
        INCLUDED = "included", "Included in plan"

    # Within the same priority and expiry, promotional-like credits burn before bonus, and
    # bonus before paid (paid credits are the ones a customer could get refunded).
    CATEGORY_RANK = {
        Category.PROMOTIONAL: 10,
        Category.REDEMPTION: 20,
        Category.INCLUDED: 30,
        Category.REFERRAL: 40,
        Category.ADJUSTMENT: 50,
        Category.BONUS: 60,
        Category.PAID: 70,
    }
    DEFAULT_PRIORITY = 100

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="lots")
    category = models.CharField(max_length=16, choices=Category.choices)
    category_rank = models.PositiveSmallIntegerField()
    priority = models.IntegerField(
        default=DEFAULT_PRIORITY, help_text="Lower burns first, before expiry and category."
    )
    amount = models.BigIntegerField(help_text="µcr granted.")
    remaining = models.BigIntegerField(help_text="µcr not yet used, expired or taken back.")
    # Derived from remaining and changes only when a lot is used up, so the partial indexes
    # below stay valid across burns and a burn can be a heap-only (HOT) update.
    has_credits = models.GeneratedField(
        expression=models.ExpressionWrapper(Q(remaining__gt=0), output_field=models.BooleanField()),
        output_field=models.BooleanField(),
        db_persist=True,
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    reference_type = models.CharField(max_length=64)
    reference_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="lot_amount_gt_0"),
            models.CheckConstraint(
                condition=Q(remaining__gte=0) & Q(remaining__lte=models.F("amount")),
                name="lot_remaining_within_amount",
            ),
        ]
        indexes = [
            models.Index(
                fields=["wallet", "priority", "expires_at", "category_rank", "created_at", "id"],
                condition=Q(has_credits=True),
                name="lot_burn_order_idx",
            ),
            models.Index(
                fields=["expires_at"],
                condition=Q(has_credits=True) & Q(expires_at__isnull=False),
                name="lot_due_expiry_idx",
            ),
            models.Index(fields=["reference_type", "reference_id"], name="lot_reference_idx"),
        ]

    def __str__(self) -> str:
        return f"Lot {self.pk} ({self.category}, {self.remaining}/{self.amount} µcr)"


class LedgerEntry(AppendOnly):
    """One signed movement of credits. Append-only: never updated, never deleted."""

    append_only_name = "Ledger entries"

    class Kind(models.TextChoices):
        TOPUP = "topup", "Top-up"
        BONUS = "bonus", "Bonus"
        PROMO = "promo", "Promotional credit"
        REDEMPTION = "redemption", "Code redemption"
        REFERRAL_TRANSFER = "referral_transfer", "Referral transfer"
        GRANT = "grant", "Plan grant"
        USAGE = "usage", "Usage"
        REFUND = "refund", "Refund"
        REVERSAL = "reversal", "Reversal"
        ADJUSTMENT = "adjustment", "Adjustment"
        EXPIRY = "expiry", "Expiry"

    # Indexes are few and partial where they can be: every index is written inside the
    # hot wallet's lock window. (wallet, id) serves the wallet's list and the FK.
    wallet = models.ForeignKey(
        Wallet, on_delete=models.PROTECT, related_name="entries", db_index=False
    )
    kind = models.CharField(max_length=24, choices=Kind.choices)
    amount = models.BigIntegerField(help_text="Signed µcr: credits are positive.")
    balance_after = models.BigIntegerField()
    lot = models.ForeignKey(
        CreditLot,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="entries",
        db_index=False,
    )
    reference_type = models.CharField(max_length=64)
    reference_id = models.CharField(max_length=64, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    reason = models.TextField(blank=True)
    corrects = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="corrections",
        db_index=False,
    )
    # UNIQUE through a constraint rather than unique=True: the field option would also build
    # a second (LIKE-pattern) index, one more write inside the wallet's lock window.
    idempotency_key = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "ledger entries"
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"], name="entry_idempotency_key_unique"
            ),
            models.CheckConstraint(condition=~Q(amount=0), name="entry_amount_not_0"),
            models.CheckConstraint(condition=Q(balance_after__gte=0), name="entry_balance_gte_0"),
            models.CheckConstraint(condition=~Q(reference_type=""), name="entry_has_reference"),
        ]
        indexes = [
            models.Index(fields=["wallet", "id"], name="entry_wallet_id_idx"),
            models.Index(fields=["reference_type", "reference_id"], name="entry_reference_idx"),
            models.Index(fields=["lot"], condition=Q(lot__isnull=False), name="entry_lot_idx"),
            models.Index(
                fields=["actor"], condition=Q(actor__isnull=False), name="entry_actor_idx"
            ),
            models.Index(
                fields=["corrects"], condition=Q(corrects__isnull=False), name="entry_corrects_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount:+d} µcr on wallet {self.wallet_id}"


class Hold(models.Model):
    """An authorization: credits reserved for one request until it is captured or released."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        CAPTURED = "captured", "Captured"
        RELEASED = "released", "Released"
        EXPIRED = "expired", "Expired"

    wallet = models.ForeignKey(
        Wallet, on_delete=models.PROTECT, related_name="holds", db_index=False
    )
    request_id = models.CharField(max_length=200)
    amount = models.BigIntegerField(help_text="µcr reserved.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)
    capture_requested = models.BigIntegerField(
        null=True, blank=True, help_text="µcr the capture asked for (the priced usage)."
    )
    captured_amount = models.BigIntegerField(null=True, blank=True, help_text="µcr charged.")
    shortfall = models.BigIntegerField(default=0, help_text="µcr asked for but not available.")
    reference_type = models.CharField(max_length=64, blank=True)
    reference_id = models.CharField(max_length=64, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["wallet", "request_id"], name="hold_request_unique"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="hold_amount_gt_0"),
            models.CheckConstraint(condition=Q(shortfall__gte=0), name="hold_shortfall_gte_0"),
        ]
        indexes = [
            models.Index(
                fields=["expires_at"],
                condition=Q(status="active"),
                name="hold_active_expiry_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Hold {self.pk} ({self.status}, {self.amount} µcr)"

    # Set by wallet.services.hold_create on the hold it returns: the wallet's available
    # credits right after the reservation (None when not known, e.g. for a replay).
    available_after: int | None = None

    @property
    def capture_key(self) -> str:
        """The idempotency key of the ledger entry a capture of this hold writes."""
        return self.capture_key_of(self.pk)

    @staticmethod
    def capture_key_of(hold_id: int) -> str:
        return f"hold-capture:{hold_id}"


def lot_burn_order() -> list[Any]:
    """The burn order of invariant 6 (``wallet/sql.py`` spells the same order in SQL):
    priority, soonest expiry (never-expiring last), promotional before bonus before paid,
    oldest first."""
    return [
        "priority",
        models.F("expires_at").asc(nulls_last=True),
        "category_rank",
        "created_at",
        "id",
    ]
