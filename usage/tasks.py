"""Background jobs of the usage app (scheduled in ``CELERY_BEAT_SCHEDULE``)."""

from celery import shared_task

from usage import services


@shared_task(time_limit=120, soft_time_limit=100)
def authorizations_close_stale() -> int:
    """Mark authorizations whose hold expired unsettled as settled (housekeeping for the
    cap checks' partial indexes; idempotent, safe to run concurrently)."""
    return services.authorizations_close_stale()


@shared_task(time_limit=600, soft_time_limit=540)
def usage_content_purge() -> int:
    """Delete logged request content past ``CONTENT_RETENTION_DAYS`` (idempotent, safe to
    run concurrently: each batch deletes what is still there)."""
    return services.usage_content_purge()
