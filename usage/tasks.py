"""Background jobs of the usage app (scheduled in ``CELERY_BEAT_SCHEDULE``)."""

import datetime as dt

from celery import shared_task

from usage import rollups, services


@shared_task(time_limit=120, soft_time_limit=100)
def authorizations_close_stale() -> int:
    """Mark authorizations whose hold expired unsettled as settled (housekeeping for the
    cap checks' partial indexes; idempotent, safe to run concurrently)."""
    return services.authorizations_close_stale()


@shared_task(time_limit=900, soft_time_limit=840)
def usage_rollup_daily(days: list[str] | None = None) -> int:
    """Roll up finished days into ``UsageDaily`` (idempotent). With ``days`` (ISO dates),
    recompute exactly those; otherwise catch up every finished day not yet rolled up."""
    if days:
        return rollups.usage_rollup_days(days=[dt.date.fromisoformat(d) for d in days])
    return len(rollups.usage_rollup_catch_up())


@shared_task(time_limit=600, soft_time_limit=540)
def usage_content_purge() -> int:
    """Delete logged request content past ``CONTENT_RETENTION_DAYS`` (idempotent, safe to
    run concurrently: each batch deletes what is still there)."""
    return services.usage_content_purge()
