"""Redemption codes: batches staff generate, the codes in them (stored as keyed hashes only),
and each redemption with the ledger entry it wrote.

Only ``redemption.services`` writes these rows (the admin edits a batch's name, expiry and
eligibility). Credits move only through ``wallet.services``.

Lock order: code -> wallet -> lots.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from redemption.codes import hint_display


class RedemptionBatch(models.Model):
    """A set of codes generated together, all worth the same credits under the same rules."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    name = models.CharField(max_length=120)
    credits_micro = models.BigIntegerField(help_text="Credits each redemption grants (µcr).")
    code_count = models.PositiveIntegerField(help_text="Number of codes generated.")
    uses_per_code = models.PositiveIntegerField(
        default=1, help_text="How many redemptions one code allows in all."
    )
    uses_per_account = models.PositiveIntegerField(
        default=1, help_text="How many codes of this batch one account may redeem."
    )
    codes_expire_at = models.DateTimeField(
        null=True, blank=True, help_text="After this moment no code of the batch is accepted."
    )
    # Expiry of the credits granted: N days after the redemption, a fixed moment, or both
    # (the earlier wins). Neither means the credits never expire.
    credit_validity_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Granted credits expire this many days after redemption."
    )
    credits_expire_at = models.DateTimeField(
        null=True, blank=True, help_text="Granted credits expire at this moment at the latest."
    )
    # Eligibility; every rule that is set must hold.
    new_accounts_within_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="New accounts only: the account was created at most this many days ago.",
    )
    min_account_age_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="The account was created at least this many days ago."
    )
    allowed_countries = models.CharField(
        max_length=400,
        blank=True,
        help_text="Comma-separated ISO country codes (the account's country); empty: any.",
    )
    require_no_prior_topup = models.BooleanField(
        default=False, help_text="Only accounts without a completed top-up."
    )
    allowed_users = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="+",
        help_text="Only these accounts (empty: anyone the other rules allow).",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    disabled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "redemption batches"
        ordering = ("-created_at", "-id")
        constraints = [
            models.CheckConstraint(condition=Q(credits_micro__gt=0), name="batch_credits_gt_0"),
            models.CheckConstraint(condition=Q(code_count__gt=0), name="batch_code_count_gt_0"),
            models.CheckConstraint(condition=Q(uses_per_code__gt=0), name="batch_uses_gt_0"),
            models.CheckConstraint(
                condition=Q(uses_per_account__gt=0), name="batch_uses_per_account_gt_0"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["active", "disabled"]), name="batch_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def country_list(self) -> list[str]:
        return [c for c in (p.strip().upper() for p in self.allowed_countries.split(",")) if c]

    def credit_expiry(self, now: dt.datetime) -> dt.datetime | None:
        """When credits granted at ``now`` expire (None: never)."""
        candidates = [self.credits_expire_at] if self.credits_expire_at else []
        if self.credit_validity_days:
            candidates.append(now + dt.timedelta(days=self.credit_validity_days))
        return min(candidates) if candidates else None


class RedemptionCode(models.Model):
    """One code. The plaintext is never stored: ``code_hash`` is its HMAC-SHA256."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    batch = models.ForeignKey(RedemptionBatch, on_delete=models.PROTECT, related_name="codes")
    code_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=8, help_text="The last characters of the code.")
    max_uses = models.PositiveIntegerField()
    uses = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)
    disabled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("batch", "id")
        constraints = [
            models.CheckConstraint(
                condition=Q(uses__gte=0) & Q(uses__lte=F("max_uses")),
                name="code_uses_within_limit",
            ),
            models.CheckConstraint(condition=Q(max_uses__gt=0), name="code_max_uses_gt_0"),
            models.CheckConstraint(
                condition=Q(status__in=["active", "disabled"]), name="code_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.display

    @property
    def display(self) -> str:
        return hint_display(self.hint)

    @property
    def exhausted(self) -> bool:
        return self.uses >= self.max_uses


class Redemption(models.Model):
    """One successful redemption: who, which code, when, and the credits it granted."""

    code = models.ForeignKey(RedemptionCode, on_delete=models.PROTECT, related_name="redemptions")
    batch = models.ForeignKey(RedemptionBatch, on_delete=models.PROTECT, related_name="redemptions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="redemptions"
    )
    # The n-th code of the batch this account redeemed (1..uses_per_account): UNIQUE with
    # (batch, user), so the database refuses one use too many even when checks race.
    sequence = models.PositiveIntegerField()
    credits_micro = models.BigIntegerField()
    ledger_entry = models.OneToOneField(
        "wallet.LedgerEntry", on_delete=models.PROTECT, related_name="+"
    )
    lot = models.OneToOneField("wallet.CreditLot", on_delete=models.PROTECT, related_name="+")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="When the credits expire.")
    client_key = models.CharField(
        max_length=200, blank=True, help_text="The caller's idempotency key, if any."
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.UniqueConstraint(
                fields=["batch", "user", "sequence"], name="redemption_once_per_use"
            ),
            models.UniqueConstraint(
                fields=["user", "client_key"],
                condition=~Q(client_key=""),
                name="redemption_client_key_unique",
            ),
            models.CheckConstraint(condition=Q(sequence__gt=0), name="redemption_sequence_gt_0"),
            models.CheckConstraint(
                condition=Q(credits_micro__gt=0), name="redemption_credits_gt_0"
            ),
        ]
        indexes = [models.Index(fields=["user", "-created_at"], name="redemption_user_idx")]

    def __str__(self) -> str:
        return f"{self.user} redeemed {self.code}"
