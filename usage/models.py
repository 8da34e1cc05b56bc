"""The price catalog, authorizations and usage records.

* ``ModelPrice`` rows are versions: a price change is a new row with a later
  ``effective_from``; rows in use are never edited, so every record can be recomputed.
* ``Authorization`` is one authorized request: its wallet ``Hold``, the price row and tier
  rate it was quoted at, and the caps it counts against while unsettled.
* ``UsageRecord`` is one settled (or one-shot) request with every factor of its price.

Only ``usage.services`` writes these tables.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone


# USD amounts: prices per million tokens with 6 decimals; per-request and per-unit prices
# with 8; an exact request cost needs up to 14 decimals (price per token times units).
def _price(**options: Any) -> models.DecimalField:
    return models.DecimalField(max_digits=16, decimal_places=6, **options)


def _fee(**options: Any) -> models.DecimalField:
    return models.DecimalField(max_digits=16, decimal_places=8, **options)


def _rate(**options: Any) -> models.DecimalField:
    return models.DecimalField(max_digits=12, decimal_places=6, **options)


class ModelPrice(models.Model):
    """One version of a model's price, in USD, valid from ``effective_from`` until the next
    version of the same model."""

    class Category(models.TextChoices):
        CHAT = "chat", "Chat / text"
        EMBEDDING = "embedding", "Embeddings"
        IMAGE = "image", "Image generation"
        AUDIO = "audio", "Audio"
        OTHER = "other", "Other"

    model = models.CharField(max_length=100, help_text="The model id clients send.")
    display_name = models.CharField(max_length=150)
    provider = models.CharField(max_length=100)
    category = models.CharField(max_length=16, choices=Category.choices, default=Category.CHAT)
    input_usd_per_mtok = _price(default=Decimal(0))
    output_usd_per_mtok = _price(default=Decimal(0))
    cached_input_usd_per_mtok = _price(
        null=True, blank=True, help_text="Empty: cached input costs the input price."
    )
    reasoning_usd_per_mtok = _price(
        null=True, blank=True, help_text="Empty: reasoning costs the output price."
    )
    request_usd = _fee(default=Decimal(0), help_text="Fee per request, in USD.")
    unit_usd = _fee(default=Decimal(0), help_text="Price per task unit (image, second, minute).")
    unit_name = models.CharField(max_length=32, blank=True, help_text="image, second, minute")
    max_output_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Caps max_tokens when estimating an authorization."
    )
    active = models.BooleanField(default=True, help_text="Inactive: the model is not offered.")
    effective_from = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model", "effective_from"], name="model_price_version_unique"
            ),
            models.CheckConstraint(
                condition=Q(input_usd_per_mtok__gte=0)
                & Q(output_usd_per_mtok__gte=0)
                & (Q(cached_input_usd_per_mtok__isnull=True) | Q(cached_input_usd_per_mtok__gte=0))
                & (Q(reasoning_usd_per_mtok__isnull=True) | Q(reasoning_usd_per_mtok__gte=0))
                & Q(request_usd__gte=0)
                & Q(unit_usd__gte=0),
                name="model_price_non_negative",
            ),
        ]
        indexes = [
            models.Index(F("model"), F("effective_from").desc(), name="model_price_lookup_idx"),
        ]

    # Not a column: read from the process's memory (``config.cached_reads``), so the
    # authorization function checks that it is still the model's current version.
    from_memory: bool = False

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"

    @property
    def cached_rate(self) -> Decimal:
        return (
            self.cached_input_usd_per_mtok
            if self.cached_input_usd_per_mtok is not None
            else self.input_usd_per_mtok
        )

    @property
    def reasoning_rate(self) -> Decimal:
        return (
            self.reasoning_usd_per_mtok
            if self.reasoning_usd_per_mtok is not None
            else self.output_usd_per_mtok
        )


class Authorization(models.Model):
    """One authorized request: credits held in the wallet until capture or release.

    Its status is its hold's (``wallet.Hold``), so the one hold-expiry job keeps both in
    step. ``settled_at`` is set by capture and release; it only narrows the partial indexes
    the cap checks use to find the credits a token or member has in flight.
    """

    token = models.ForeignKey(
        "accounts.ApiToken", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    wallet = models.ForeignKey(
        "wallet.Wallet", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    membership = models.ForeignKey(
        "accounts.Membership",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    hold = models.OneToOneField("wallet.Hold", on_delete=models.PROTECT, related_name="+")
    price = models.ForeignKey(
        ModelPrice, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    token_group = models.ForeignKey(
        "accounts.TokenGroup", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    tier_rate = models.DecimalField(max_digits=8, decimal_places=4)
    request_id = models.CharField(max_length=150)
    model = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=100, blank=True)
    estimated_input_tokens = models.BigIntegerField()
    max_tokens = models.BigIntegerField()
    estimated_task_units = models.DecimalField(max_digits=18, decimal_places=6, default=0)
    amount_micro = models.BigIntegerField(help_text="µcr held.")
    body_hash = models.CharField(max_length=64)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["token", "request_id"], name="authorization_request_unique"
            ),
            models.CheckConstraint(
                condition=Q(amount_micro__gt=0), name="authorization_amount_gt_0"
            ),
        ]
        indexes = [
            models.Index(
                fields=["token"], condition=Q(settled_at__isnull=True), name="auth_token_open_idx"
            ),
            models.Index(
                fields=["membership"],
                condition=Q(settled_at__isnull=True) & Q(membership__isnull=False),
                name="auth_member_open_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Authorization {self.pk} ({self.model}, {self.amount_micro} µcr)"


class UsageRecord(models.Model):
    """One request, priced and charged. Every factor of the price is copied here, so
    ``credits = round_up(usd_cost x markup x tier_rate x credits_per_usd)`` can be checked
    from the record alone; ``price`` points at the exact catalog version used."""

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    request_id = models.CharField(max_length=150)
    authorization = models.OneToOneField(
        Authorization,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="usage_record",
    )
    wallet = models.ForeignKey(
        "wallet.Wallet", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    token = models.ForeignKey(
        "accounts.ApiToken",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    token_group = models.ForeignKey(
        "accounts.TokenGroup",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    price = models.ForeignKey(
        ModelPrice, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    model = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SUCCEEDED)
    error = models.CharField(max_length=1000, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    latency_ms = models.PositiveIntegerField(null=True, blank=True)

    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    task_units = models.DecimalField(max_digits=18, decimal_places=6, default=Decimal(0))
    unit_name = models.CharField(max_length=32, blank=True)

    # The factors of the price, as used.
    input_usd_per_mtok = _price()
    output_usd_per_mtok = _price()
    cached_input_usd_per_mtok = _price()
    reasoning_usd_per_mtok = _price()
    request_usd = _fee()
    unit_usd = _fee()
    markup = _rate()
    tier_rate = models.DecimalField(max_digits=8, decimal_places=4)
    credits_per_usd = _rate()
    usd_cost = models.DecimalField(
        max_digits=32, decimal_places=14, help_text="Exact provider cost in USD."
    )
    cost_micro = models.BigIntegerField(help_text="µcr the request cost (rounded up once).")
    charged_micro = models.BigIntegerField(help_text="µcr taken from the wallet.")
    shortfall_micro = models.BigIntegerField(
        default=0, help_text="µcr the wallet could not cover (cost - charged)."
    )

    estimated = models.BooleanField(
        default=False, help_text="The token counts are the gateway's estimate, not reported."
    )
    metadata = models.JSONField(default=dict, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    body_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["token", "request_id"], name="usage_request_unique"),
            models.UniqueConstraint(
                fields=["wallet", "request_id"],
                condition=Q(token__isnull=True),
                name="usage_request_unique_without_token",
            ),
            models.CheckConstraint(
                condition=Q(cost_micro=F("charged_micro") + F("shortfall_micro")),
                name="usage_cost_is_charged_plus_shortfall",
            ),
            models.CheckConstraint(
                condition=Q(charged_micro__gte=0) & Q(shortfall_micro__gte=0),
                name="usage_amounts_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(input_tokens__gte=0)
                & Q(output_tokens__gte=0)
                & Q(reasoning_tokens__gte=0)
                & Q(cached_input_tokens__gte=0)
                & Q(cached_input_tokens__lte=F("input_tokens"))
                & Q(task_units__gte=0),
                name="usage_counts_valid",
            ),
        ]
        indexes = [
            # The read APIs and the export: one owner's records in one wallet, newest first,
            # optionally within a date range.
            # Covering the amounts lets the wallet's totals come from the index alone.
            models.Index(
                fields=["wallet", "user", "id"],
                include=["charged_micro", "shortfall_micro"],
                name="usage_owner_idx",
            ),
            models.Index(fields=["wallet", "user", "created_at"], name="usage_owner_date_idx"),
        ]

    def __str__(self) -> str:
        return f"Usage {self.pk} ({self.model}, {self.charged_micro} µcr)"


class UsageDaily(models.Model):
    """One UTC day of usage records, summed per (wallet, user, token, model, status): what
    the console's charts, per-model summaries and totals read instead of scanning records.

    Written only by ``usage.rollups`` (which recomputes whole days from the records, so a
    rerun gives the same rows). Days after ``UsageRollupState.complete_through`` are read
    live from the records instead.
    """

    day = models.DateField()
    wallet = models.ForeignKey(
        "wallet.Wallet", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    token = models.ForeignKey(
        "accounts.ApiToken",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,
    )
    model = models.CharField(max_length=100)
    status = models.CharField(max_length=16)
    requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    charged_micro = models.BigIntegerField(default=0)
    shortfall_micro = models.BigIntegerField(default=0)
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # A record without a token counts as token 0 here, so it has one row a day too.
            models.UniqueConstraint(
                F("day"),
                F("wallet"),
                F("user"),
                Coalesce(F("token"), Value(0)),
                F("model"),
                F("status"),
                name="usage_daily_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["wallet", "user", "day"], name="usage_daily_owner_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model} ({self.requests} requests)"


class UsageRollupState(models.Model):
    """A single row: every UTC day up to ``complete_through`` (inclusive) is in
    ``UsageDaily`` and over, so readers take those days from the rollups and only later ones
    from the records."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    complete_through = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Usage rolled up through {self.complete_through}"


class UsageContent(models.Model):
    """What a request said and answered, kept only when its token or organization logs
    content (``log_content``), each part cut to ``CONTENT_LOG_MAX_CHARS`` characters.

    A table of its own, one row per logged record: records stay lean, and the retention
    purge (``usage.tasks.usage_content_purge``) is a plain delete by ``created_at``.
    """

    record = models.OneToOneField(
        UsageRecord, on_delete=models.CASCADE, primary_key=True, related_name="content"
    )
    system = models.TextField(blank=True, help_text="The system message(s).")
    messages = models.TextField(blank=True, help_text="The prompt messages, as JSON.")
    tools = models.TextField(blank=True, help_text="The tool definitions, as JSON.")
    tool_calls = models.TextField(blank=True, help_text="The tool calls made, as JSON.")
    response = models.TextField(blank=True, help_text="The response text.")
    context_bytes = models.BigIntegerField(
        default=0, help_text="Size of the request's context (system, messages, tools), UTF-8."
    )
    truncated = models.BooleanField(default=False, help_text="A part was cut to the limit.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"Content of usage {self.record_id}"


class UpstreamChannel(models.Model):
    """An OpenAI-compatible upstream the gateway forwards calls to. Enabled channels are
    tried by ``priority`` (highest first); the next one is tried when a channel cannot be
    reached or answers 5xx before anything was sent to the client.

    ``api_key`` is write-only: stored sealed (``usage.keybox``), never displayed by the
    admin (only ``api_key_hint``, its last four characters) and never logged.
    """

    name = models.CharField(max_length=100, unique=True)
    base_url = models.URLField(
        max_length=300,
        default="https://openrouter.ai/api/v1",
        help_text="The OpenAI-compatible API root, e.g. https://openrouter.ai/api/v1.",
    )
    api_key = models.CharField(max_length=1000, blank=True, help_text="Sealed (usage.keybox).")
    api_key_hint = models.CharField(max_length=8, blank=True, editable=False)
    model_map = models.JSONField(
        default=dict,
        blank=True,
        help_text='Our model id to the upstream\'s, e.g. {"gpt-4o-mini": "openai/gpt-4o-mini"}; '
        "models not listed are sent unchanged.",
    )
    priority = models.IntegerField(default=0, help_text="Higher is tried first.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-priority", "id"]

    def __str__(self) -> str:
        return self.name
