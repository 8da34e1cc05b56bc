"""Background work of the referrals app."""

from __future__ import annotations

import datetime as dt
import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from referrals import services

logger = logging.getLogger(__name__)


@shared_task(soft_time_limit=240, time_limit=300, acks_late=True)
def reconcile_referral_rewards() -> int:
    """Beat, hourly: rewards and reversals the top-up follow-ups missed (idempotent)."""
    since = timezone.now() - dt.timedelta(days=settings.REFERRAL_RECONCILE_DAYS)
    looked_at = services.referral_rewards_reconcile(since=since)
    logger.info("reconcile_referral_rewards: %s orders of invitees checked", looked_at)
    return looked_at
