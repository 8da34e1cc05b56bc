"""Background work of the billing app. Tasks take ids, are idempotent and time-limited, and
are enqueued after the transaction that made them necessary commits."""

from __future__ import annotations

import logging
from smtplib import SMTPException
from typing import Any

from celery import shared_task
from django.db import DatabaseError

from billing import services
from referrals import services as referral_services

logger = logging.getLogger(__name__)


@shared_task(soft_time_limit=240, time_limit=300, acks_late=True)
def reconcile_payments(older_than_minutes: int | None = None) -> str:
    """Beat, every 5 minutes: settle orders, events and refunds webhooks missed."""
    report = services.payments_reconcile(
        older_than_minutes=older_than_minutes, time_budget_seconds=200
    )
    logger.info("reconcile_payments: %s", report.summary())
    return report.summary()


# Follow-ups: short, retried with backoff when the mail server or the database is
# unreachable; referrals.tasks.reconcile_referral_rewards catches up whatever still fails.
_FOLLOWUP: dict[str, Any] = {
    "soft_time_limit": 30,
    "time_limit": 60,
    "autoretry_for": (SMTPException, OSError, DatabaseError),
    "retry_backoff": True,
    "max_retries": 5,
}


@shared_task(**_FOLLOWUP)
def topup_completed_followups(order_id: int) -> None:
    """After a top-up completes: the inviter's reward if the customer was invited, and the
    customer's receipt (sent even if the reward failed; the task then fails for a retry).
    Both are idempotent, so a retry repeats neither."""
    try:
        referral_services.referral_reward_for_order(order_id=order_id)
    finally:
        services.topup_receipt_send(order_id=order_id)


@shared_task(**_FOLLOWUP)
def topup_refunded_followups(order_id: int, refund_id: int) -> None:
    """After a refund succeeds: the reversal of any invite reward paid on the top-up, and the
    customer's confirmation. Both are idempotent."""
    try:
        referral_services.referral_reversal_for_refund(order_id=order_id, refund_id=refund_id)
    finally:
        services.refund_notice_send(refund_id=refund_id)


@shared_task(soft_time_limit=600, time_limit=660, acks_late=True)
def recurring_grants() -> int:
    """Beat, hourly: grant this month's plan allowances (once per grant and month)."""
    return services.recurring_grants_run()
