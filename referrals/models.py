"""Invite rewards: each user's invite code and reward account, who invited whom, the reward
rules, and the reward ledger.

The reward balance is money-like, so it is kept like the wallet: integer µcr, an append-only
ledger whose entries carry UNIQUE idempotency keys, and CHECK constraints. Only
``referrals.services`` writes these rows (the admin edits reward rules).

Invariants (checked by ``referrals.verify.referral_verify``):

1. ``balance - debt == sum(entry.amount)`` for every account, and each entry's
   ``balance_after`` / ``debt_after`` is that running sum split into its positive and
   negative parts (so a debt is paid off by the next credit before anything else).
2. ``balance >= 0``, ``debt >= 0``, and never both positive (CHECK constraints).
3. ``total_earned == sum(rewards) + sum(reversals)``: what was earned and not taken back.

Lock order: referral account -> wallet -> lots.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone


class ReferralAccount(models.Model):
    """A user's invite code and reward balance (created the first time either is needed)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="referral_account"
    )
    code = models.CharField(max_length=16, unique=True)
    balance = models.BigIntegerField(default=0, help_text="Rewards ready to transfer (µcr).")
    debt = models.BigIntegerField(
        default=0, help_text="Reversed rewards that could not be recovered (µcr)."
    )
    total_earned = models.BigIntegerField(
        default=0, help_text="Every reward earned, less those reversed (µcr)."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(balance__gte=0), name="referral_balance_gte_0"),
            models.CheckConstraint(condition=Q(debt__gte=0), name="referral_debt_gte_0"),
            models.CheckConstraint(
                condition=Q(balance=0) | Q(debt=0), name="referral_balance_or_debt"
            ),
            models.CheckConstraint(
                condition=Q(total_earned__gte=0), name="referral_total_earned_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"Invite code {self.code} of {self.user}"


class RewardRule(models.Model):
    """What an inviter earns when the people they invited pay, and what invitees get when
    they sign up. At most one rule is active; the active one decides each reward when a
    top-up completes. A rule's terms cannot change once saved: make a new rule instead, so
    every past reward stays explained by the rule it names."""

    class Basis(models.TextChoices):
        PERCENT_FIRST = "percent_first", "Percentage of the first top-up"
        PERCENT_WINDOW = "percent_window", "Percentage of every top-up within N days of sign-up"
        FIXED_FIRST = "fixed_first", "Fixed amount on the first top-up"

    name = models.CharField(max_length=120)
    basis = models.CharField(max_length=24, choices=Basis.choices)
    percent = models.DecimalField(
        max_digits=6,
        decimal_places=3,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0.001")), MaxValueValidator(Decimal(100))],
        help_text="Percent of the paid credits of the top-up (bonus credits excluded).",
    )
    window_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="For the N-days basis: top-ups completed this long "
        "after the invitee signed up earn rewards.",
    )
    fixed_micro = models.BigIntegerField(
        null=True, blank=True, help_text="For the fixed basis: the reward in µcr."
    )
    signup_credits_micro = models.BigIntegerField(
        default=0, help_text="Promotional credits for the invitee at sign-up (µcr; 0: none)."
    )
    signup_credits_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="The invitee's sign-up credits expire after this."
    )
    is_active = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    TERMS = (
        "basis",
        "percent",
        "window_days",
        "fixed_micro",
        "signup_credits_micro",
        "signup_credits_days",
    )

    class Meta:
        ordering = ("-is_active", "-created_at")
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="one_active_reward_rule"
            ),
            models.CheckConstraint(
                condition=(
                    Q(basis="percent_first", percent__gt=0, percent__lte=100)
                    | Q(
                        basis="percent_window",
                        percent__gt=0,
                        percent__lte=100,
                        window_days__gt=0,
                    )
                    | Q(basis="fixed_first", fixed_micro__gt=0)
                ),
                name="reward_rule_terms_complete",
                violation_error_message="The rule's basis and its terms do not fit together.",
            ),
            models.CheckConstraint(
                condition=Q(signup_credits_micro__gte=0), name="reward_rule_signup_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name}{' (active)' if self.is_active else ''}"

    def clean(self) -> None:
        required: dict[str, list[str]] = {
            self.Basis.PERCENT_FIRST: ["percent"],
            self.Basis.PERCENT_WINDOW: ["percent", "window_days"],
            self.Basis.FIXED_FIRST: ["fixed_micro"],
        }
        needs = required.get(self.basis, [])
        labels = {
            "percent": "a percent",
            "window_days": "a number of days",
            "fixed_micro": "an amount",
        }
        missing = [labels[name] for name in needs if not getattr(self, name)]
        if missing:
            raise ValidationError(f"This basis needs {' and '.join(missing)}.")
        if self.is_active:
            other = RewardRule.objects.filter(is_active=True).exclude(pk=self.pk).first()
            if other is not None:
                raise ValidationError(
                    f"“{other}” is active; deactivate it first (one rule at a time)."
                )


class Referral(models.Model):
    """An invitee signed up through an inviter's link. Recorded at sign-up only; an account
    is invited at most once, and never by itself."""

    inviter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="referrals_made"
    )
    invitee = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="referred_by"
    )
    invite_code = models.CharField(max_length=16)
    rule = models.ForeignKey(
        RewardRule,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The rule active at sign-up (its sign-up credits were granted).",
    )
    signup_credits_micro = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.CheckConstraint(
                condition=~Q(inviter=models.F("invitee")), name="referral_not_self"
            ),
        ]
        indexes = [models.Index(fields=["inviter", "-created_at"], name="referral_inviter_idx")]

    def __str__(self) -> str:
        return f"{self.inviter} invited {self.invitee}"


class ReferralLedgerEntry(models.Model):
    """One signed movement of a reward balance. Append-only."""

    class Kind(models.TextChoices):
        REWARD = "reward", "Reward"
        REVERSAL = "reversal", "Reversal (top-up refunded)"
        RECOVERY = "recovery", "Recovered from the wallet"
        TRANSFER = "transfer", "Transfer to the wallet"

    account = models.ForeignKey(ReferralAccount, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.BigIntegerField(help_text="Signed µcr: positive adds to the balance.")
    balance_after = models.BigIntegerField()
    debt_after = models.BigIntegerField()
    referral = models.ForeignKey(
        Referral, null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    rule = models.ForeignKey(
        RewardRule, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reverses = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversals"
    )
    wallet_entry = models.ForeignKey(
        "wallet.LedgerEntry", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reference_type = models.CharField(max_length=64)
    reference_id = models.CharField(max_length=64, blank=True)
    note = models.CharField(max_length=300, blank=True)
    idempotency_key = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "referral ledger entries"
        ordering = ("-id",)
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="referral_entry_key_unique"),
            models.CheckConstraint(condition=~Q(amount=0), name="referral_entry_amount_not_0"),
            models.CheckConstraint(
                condition=Q(balance_after__gte=0) & Q(debt_after__gte=0),
                name="referral_entry_after_gte_0",
            ),
            models.CheckConstraint(
                condition=Q(balance_after=0) | Q(debt_after=0),
                name="referral_entry_balance_or_debt",
            ),
            models.CheckConstraint(
                condition=(Q(kind__in=["reward", "recovery"]) & Q(amount__gt=0))
                | (Q(kind__in=["reversal", "transfer"]) & Q(amount__lt=0)),
                name="referral_entry_sign_matches_kind",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "id"], name="referral_entry_account_idx"),
            models.Index(
                fields=["reference_type", "reference_id"], name="referral_entry_reference_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount:+d} µcr on {self.account.code}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None and not self._state.adding:
            raise RuntimeError("Referral ledger entries are append-only.")
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise RuntimeError("Referral ledger entries are append-only.")
