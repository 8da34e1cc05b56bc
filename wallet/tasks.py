"""Ledger housekeeping jobs (scheduled in ``CELERY_BEAT_SCHEDULE``). Both services are
idempotent and safe to run concurrently: each hold and each lot expires once."""

from __future__ import annotations

import time

from celery import shared_task

from wallet import services


def _until_done(step: object, budget_seconds: float) -> int:
    total, started = 0, time.monotonic()
    while time.monotonic() - started < budget_seconds:
        done = step()  # type: ignore[operator]
        total += done
        if not done:
            break
    return total


@shared_task(soft_time_limit=50, time_limit=60, acks_late=True)
def holds_expire() -> int:
    """Beat, every minute: return the credits of holds left behind by crashed requests."""
    return _until_done(lambda: services.holds_expire(batch_size=1000), budget_seconds=40)


@shared_task(soft_time_limit=600, time_limit=660, acks_late=True)
def lots_expire() -> int:
    """Beat, hourly: write the expiry entry of every lot past its expiry."""
    return _until_done(lambda: services.lots_expire(batch_size=500), budget_seconds=540)
