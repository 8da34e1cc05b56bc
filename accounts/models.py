from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **fields: Any) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=normalize_email(email), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **fields: Any) -> User:
        fields.setdefault("is_staff", False)
        fields.setdefault("is_superuser", False)
        return self._create(email, password, **fields)

    def get_by_natural_key(self, username: str | None) -> User:
        # Log-in matches sign-up: addresses are compared without case.
        return self.get(email=normalize_email(username or ""))

    def create_superuser(self, email: str, password: str | None = None, **fields: Any) -> User:
        fields.setdefault("is_staff", True)
        fields.setdefault("is_superuser", True)
        return self._create(email, password, **fields)


def normalize_email(email: str) -> str:
    """Emails are the log-in, so they are compared without case and surrounding spaces."""
    return email.strip().lower()


class User(AbstractBaseUser, PermissionsMixin):
    """A person. The email address is the log-in; the country feeds eligibility rules."""

    email = models.EmailField("email address", max_length=254, unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    country = models.CharField(
        max_length=2, blank=True, help_text="ISO 3166-1 alpha-2 country code, e.g. US."
    )
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    # Where alerts go (low balance, spend): this address if set, else the log-in email; and,
    # optionally, a customer endpoint that receives the same alerts as signed JSON POSTs.
    notification_email = models.EmailField(blank=True)
    alert_webhook_url = models.URLField(blank=True, max_length=500)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.email

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.email = normalize_email(self.email)
        super().save(*args, **kwargs)

    def get_full_name(self) -> str:
        return self.full_name or self.email

    @property
    def alert_email(self) -> str:
        return self.notification_email or self.email

    def get_short_name(self) -> str:
        return self.full_name.split(" ")[0] if self.full_name else self.email


class Organization(models.Model):
    """A team that funds a shared credit pool (its own wallet)."""

    name = models.CharField(max_length=150)
    slug = models.SlugField(max_length=80, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The pool's monthly budget, for spend alerts (alerts.services): owners and admins are
    # warned when the members together have spent ORG_SPEND_ALERT_PERCENT of it this month.
    monthly_spend_limit_micro = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Monthly budget of the pool in micro-credits, for spend alerts. Empty: none.",
    )
    log_content = models.BooleanField(
        default=False,
        help_text="Keep the prompts and responses of every request made with the "
        "organization's tokens (for CONTENT_RETENTION_DAYS).",
    )

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's place in an organization, with an optional monthly spend limit on the pool."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    monthly_spend_limit_micro = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Most this member may spend from the pool per calendar month (UTC), in "
        "micro-credits. Empty means no limit beyond the pool's balance.",
    )
    # What the member's API tokens were charged from the pool in ``spend_month`` (the first
    # day of a calendar month, UTC); written only by usage capture, under this row's lock.
    spend_month = models.DateField(null=True, blank=True)
    spend_month_micro = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "user"], name="accounts_membership_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(monthly_spend_limit_micro__isnull=True)
                | models.Q(monthly_spend_limit_micro__gte=0),
                name="accounts_membership_limit_non_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(spend_month_micro__gte=0),
                name="accounts_membership_spend_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    @property
    def can_manage(self) -> bool:
        return self.role in (self.Role.OWNER, self.Role.ADMIN)

    def spent_in(self, month: dt.date) -> int:
        """Micro-credits charged to this member in ``month`` (its first day)."""
        return self.spend_month_micro if self.spend_month == month else 0


class Invitation(models.Model):
    """An invitation to join an organization, sent by email (usually to someone without
    an account yet). Accepted once, by the account with that email address, before
    ``expires_at``. Only a SHA-256 hash of the link's secret is stored."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField(help_text="Lower-cased; only this address can accept.")
    role = models.CharField(
        max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER
    )
    monthly_spend_limit_micro = models.BigIntegerField(null=True, blank=True)
    invited_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, related_name="+", db_index=False
    )
    secret_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", db_index=False
    )

    class Meta:
        constraints = [
            # One open invitation per address and organization (inviting again replaces it).
            models.UniqueConstraint(
                fields=["organization", "email"],
                condition=models.Q(accepted_at__isnull=True),
                name="accounts_invitation_open_unique",
            ),
            models.CheckConstraint(
                condition=models.Q(monthly_spend_limit_micro__isnull=True)
                | models.Q(monthly_spend_limit_micro__gte=0),
                name="accounts_invitation_limit_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"Invitation of {self.email} to {self.organization_id}"


class BillingTier(models.Model):
    """A rate multiplier on every price (DESIGN.md: ``tier_rate``), e.g. 0.3, 1.0 or 1.5."""

    name = models.CharField(max_length=64, unique=True)
    rate = models.DecimalField(
        max_digits=8,
        decimal_places=4,
        help_text="Multiplier applied to the credit cost of every request (1.0 = list price).",
    )
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(rate__gt=0), name="billing_tier_rate_gt_0"),
        ]

    def __str__(self) -> str:
        return f"{self.name} (x{self.rate.normalize()})"


class TokenGroup(models.Model):
    """A class of API tokens: its billing tier and, optionally, the models it may call."""

    name = models.CharField(max_length=64, unique=True)
    tier = models.ForeignKey(BillingTier, on_delete=models.PROTECT, related_name="groups")
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text="Model ids (shell patterns such as gpt-4o* allowed); empty allows every model.",
    )
    is_default = models.BooleanField(
        default=False, help_text="New tokens join this group unless another is chosen."
    )
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="token_group_one_default",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ApiToken(models.Model):
    """A scoped API credential. Only a public prefix and the SHA-256 of the secret are kept;
    the secret (``sk-live-<prefix>-<secret>``) is shown once, at creation or rotation.

    The token spends from one wallet: its owner's, or the pool of an organization the owner
    belongs to (``membership`` is then set; when the membership ends the token stops working).
    """

    class Scope(models.TextChoices):
        INFERENCE = "inference", "Inference (the OpenAI-compatible gateway)"
        METERING = "metering", "Metering (authorize, capture, release, record)"
        READ = "read", "Read (wallet, ledger, usage)"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        REVOKED = "revoked", "Revoked"

    class BudgetPeriod(models.TextChoices):
        NONE = "", "No periodic budget"
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly (from Monday)"
        MONTHLY = "monthly", "Monthly"

    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="api_tokens")
    wallet = models.ForeignKey(
        "wallet.Wallet", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="api_tokens"
    )
    membership = models.ForeignKey(
        Membership,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="api_tokens",
        help_text="For organization tokens: the owner's membership, whose spend limit applies.",
    )
    name = models.CharField(max_length=100)
    group = models.ForeignKey(TokenGroup, on_delete=models.PROTECT, related_name="tokens")
    scopes = models.JSONField(default=list, help_text="Subset of inference, metering, read.")
    quota_micro = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Most this token may spend in total, in micro-credits; empty = unlimited "
        "(still limited by the wallet's balance).",
    )
    used_micro = models.BigIntegerField(default=0, help_text="Micro-credits charged so far.")
    # A budget per calendar period (UTC), besides the lifetime quota. What was charged in
    # the period that starts on ``budget_period_start`` is ``budget_spent_micro``; both are
    # written only by usage capture, under this row's lock, and start again with a new period.
    budget_period = models.CharField(
        max_length=8, choices=BudgetPeriod.choices, blank=True, default=BudgetPeriod.NONE
    )
    budget_micro = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Most this token may spend per budget period, in micro-credits; empty = "
        "no periodic budget.",
    )
    budget_period_start = models.DateField(null=True, blank=True)
    budget_spent_micro = models.BigIntegerField(default=0)
    rate_limit_rpm = models.PositiveIntegerField(
        null=True, blank=True, help_text="Model requests per minute; empty = no limit."
    )
    rate_limit_tpm = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens per minute (estimated at authorization)."
    )
    log_content = models.BooleanField(
        default=False,
        help_text="Keep the prompts and responses of this token's requests "
        "(for CONTENT_RETENTION_DAYS).",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model ids or patterns; empty = the group's models."
    )
    allowed_ips = models.JSONField(
        default=list, blank=True, help_text="IP addresses or CIDR ranges; empty = anywhere."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64, help_text="SHA-256 of the full secret.")
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    rotated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(quota_micro__isnull=True) | models.Q(quota_micro__gte=0),
                name="api_token_quota_non_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(used_micro__gte=0), name="api_token_used_non_negative"
            ),
            models.CheckConstraint(
                condition=(models.Q(budget_micro__isnull=True) & models.Q(budget_period=""))
                | (models.Q(budget_micro__gte=0) & ~models.Q(budget_period="")),
                name="api_token_budget_has_period",
            ),
            models.CheckConstraint(
                condition=models.Q(budget_spent_micro__gte=0),
                name="api_token_budget_spent_non_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(membership__isnull=True) | models.Q(organization__isnull=False),
                name="api_token_membership_needs_organization",
            ),
        ]

    # Not a column: ``(wallet.min_balance_micro,)`` when the authentication query read it
    # along with the token, so the metering checks need not read the wallet again.
    wallet_min_balance: tuple[int | None] | None = None
    # Not a column: when the token was read from the process's memory rather than the
    # database (``config.cached_reads``), the ``accounts_token_state`` digest it was read
    # with, which the metering functions check.
    cached_state: str | None = None

    def __str__(self) -> str:
        return f"{self.name} (sk-live-{self.prefix}-…)"

    @property
    def display_prefix(self) -> str:
        return f"sk-live-{self.prefix}"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
