"""Alert jobs (scheduled in ``CELERY_BEAT_SCHEDULE``): idempotent, time-limited, retry-safe."""

from __future__ import annotations

import logging
from smtplib import SMTPException

import httpx
from celery import shared_task
from django.db import DatabaseError

from alerts import services

logger = logging.getLogger(__name__)


@shared_task(soft_time_limit=50, time_limit=60, acks_late=True)
def low_balance_sweep() -> str:
    """Beat, every minute: alert wallets that crossed below their threshold, re-arm the
    ones back above it."""
    report = services.low_balance_sweep()
    logger.info("low_balance_sweep: %s", report)
    return str(report)


@shared_task(soft_time_limit=240, time_limit=300, acks_late=True)
def organization_spend_sweep() -> int:
    """Beat, every 5 minutes: members and pools past their share of the monthly limit."""
    return services.organization_spend_sweep()


@shared_task(
    soft_time_limit=30,
    time_limit=60,
    acks_late=True,
    autoretry_for=(SMTPException, OSError, DatabaseError, httpx.HTTPError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def alert_deliver(alert_id: int) -> None:
    """Email the alert (once), then call the customer's webhook (until it succeeds)."""
    services.alert_email_send(alert_id=alert_id)
    services.alert_webhook_send(alert_id=alert_id)
