"""The audit trail of staff actions. Append-only: written by ``audit.services`` in the
transaction of the action it describes; a PostgreSQL trigger refuses UPDATE and DELETE."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from config.models import AppendOnly
from usage.models import UsageRecord


class AuditRecord(AppendOnly):
    """Who did what to which object, why, and what it looked like before and after."""

    append_only_name = "Audit records"

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    # The actor's email when the record was written (a user may later change it).
    actor_label = models.CharField(max_length=254, blank=True)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    reason = models.TextField(blank=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    # The staff action's idempotency key: a retried form submission writes no second record.
    idempotency_key = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-id",)
        permissions = [
            ("adjust_balance", "Can adjust balances up to the support limit"),
            ("adjust_balance_unlimited", "Can adjust balances above the support limit"),
            ("correct_charge", "Can correct the charge of a usage record"),
            ("disable_account", "Can disable customer accounts"),
            ("revoke_tokens", "Can revoke every API token of an account"),
            ("read_margin_report", "Can view the margin report"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="audit_idempotency_key_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["target_type", "target_id"], name="audit_target_idx"),
            models.Index(fields=["actor", "id"], name="audit_actor_idx"),
            models.Index(fields=["action", "id"], name="audit_action_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} on {self.target_type} {self.target_id} by {self.actor_label}"


class MarginReport(UsageRecord):
    """No table of its own: the admin's entry point to the margin report (Finance)."""

    class Meta:
        proxy = True
        verbose_name = "margin report"
        verbose_name_plural = "margin report"
        default_permissions = ()
