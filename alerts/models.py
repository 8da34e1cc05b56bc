"""One row per alert decided on. The UNIQUE ``key`` makes each alert exist once (one per
low-balance dip, one per member or pool per month); ``email_sent_at`` and
``webhook_sent_at`` are claimed before sending, so retries never deliver twice."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Alert(models.Model):
    class Kind(models.TextChoices):
        LOW_BALANCE = "low_balance", "Low balance"
        MEMBER_SPEND = "member_spend", "Member spend"
        POOL_SPEND = "pool_spend", "Organization pool spend"

    key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    wallet = models.ForeignKey(
        "wallet.Wallet", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    organization = models.ForeignKey(
        "accounts.Organization",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    recipients = models.JSONField(default=list)
    subject = models.CharField(max_length=200)
    body = models.TextField()
    webhook_url = models.URLField(max_length=500, blank=True)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_attempts = models.PositiveIntegerField(default=0)
    webhook_error = models.CharField(max_length=1000, blank=True)

    class Meta:
        indexes = [models.Index(fields=["wallet", "created_at"], name="alert_wallet_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} alert {self.key}"
