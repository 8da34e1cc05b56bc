"""Deciding and delivering customer alerts. Moves no credits.

Low balance: a wallet *crosses below* its threshold when its balance is below it now and
was at or above it before. ``Wallet.low_balance_alerted_at`` is the arming flag (empty:
armed). The sweep sets it with a conditional UPDATE (``WHERE low_balance_alerted_at IS
NULL``), in the transaction that creates the alert, so each dip alerts exactly once however
many sweeps run at once; a wallet back at or above its threshold is re-armed. A wallet that
was never at or above its threshold (a new, unfunded account) is disarmed without an alert.

Organization spend: a member (against ``Membership.monthly_spend_limit_micro``) or the pool
(against ``Organization.monthly_spend_limit_micro``) that has spent ``ORG_SPEND_ALERT_PERCENT``
of its limit this UTC month alerts once per month (the alert's UNIQUE key names the month).

Delivery runs after commit (``alert_deliver`` task): the email once (claimed before sending),
then the customer's webhook, if any, retried by Celery; a webhook failure never touches
money or the email.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Membership, Organization
from alerts.models import Alert
from wallet import money
from wallet.models import LedgerEntry, Wallet

logger = logging.getLogger(__name__)


def _enqueue_delivery(alert_id: int) -> None:
    def enqueue() -> None:
        from alerts import tasks

        tasks.alert_deliver.delay(alert_id)

    # Robust: a broker outage must not fail the sweep; undelivered alerts are re-sent by
    # the next sweep (``alerts_undelivered``).
    transaction.on_commit(enqueue, robust=True)


def _default_threshold() -> int:
    return money.credits_to_micro(settings.LOW_BALANCE_THRESHOLD_CREDITS, allow_zero=True)


def _threshold_expr() -> Any:
    return Coalesce(F("low_balance_threshold_micro"), Value(_default_threshold()))


@dataclass(frozen=True)
class SweepReport:
    alerted: int = 0
    disarmed: int = 0
    rearmed: int = 0
    redelivered: int = 0


def _owner_contacts(wallet: Wallet) -> tuple[list[str], str]:
    if wallet.user_id is not None:
        user = wallet.user
        assert user is not None
        return [user.alert_email], user.alert_webhook_url
    assert wallet.organization_id is not None
    return _managers(wallet.organization_id), ""


def _low_balance_alert(wallet: Wallet, threshold: int, now: dt.datetime) -> Alert:
    recipients, webhook_url = _owner_contacts(wallet)
    balance = money.format_credits(wallet.balance)
    limit = money.format_credits(threshold)
    return Alert.objects.create(
        key=f"low-balance:{wallet.pk}:{now.isoformat()}",
        kind=Alert.Kind.LOW_BALANCE,
        wallet=wallet,
        organization_id=wallet.organization_id,
        recipients=recipients,
        subject=f"Your credit balance is low: {balance} credits",
        body=(
            f"The balance of {wallet.owner_label} is {balance} credits, below your alert "
            f"threshold of {limit} credits.\n\nTop up at {settings.SITE_URL}/ to keep your "
            "API calls running.\n"
        ),
        webhook_url=webhook_url,
        payload={
            "type": "wallet.low_balance",
            "wallet_id": wallet.pk,
            "balance_micro": wallet.balance,
            "threshold_micro": threshold,
            "balance": balance,
            "threshold": limit,
            "created_at": now.isoformat(),
        },
        created_at=now,
    )


def low_balance_sweep(*, now: dt.datetime | None = None, batch_size: int = 1000) -> SweepReport:
    """Alert every wallet that crossed below its threshold since it was last armed, and
    re-arm every wallet back at or above it. Idempotent; safe to run concurrently."""
    now = now or timezone.now()
    threshold = _threshold_expr()
    rearmed = Wallet.objects.filter(
        low_balance_alerted_at__isnull=False, balance__gte=threshold
    ).update(low_balance_alerted_at=None)
    candidates = list(
        Wallet.objects.filter(low_balance_alerted_at__isnull=True, balance__lt=threshold)
        .annotate(threshold=threshold)
        .values_list("id", "threshold")
        .order_by("id")[:batch_size]
    )
    alerted = disarmed = 0
    for wallet_id, wallet_threshold in candidates:
        with transaction.atomic():
            claimed = Wallet.objects.filter(
                pk=wallet_id, low_balance_alerted_at__isnull=True, balance__lt=threshold
            ).update(low_balance_alerted_at=now)
            if not claimed:
                continue  # another sweep took it, or the balance rose meanwhile
            was_above = LedgerEntry.objects.filter(
                wallet_id=wallet_id, balance_after__gte=wallet_threshold
            ).exists()
            if not was_above:
                disarmed += 1
                continue
            wallet = Wallet.objects.select_related("user").get(pk=wallet_id)
            alert = _low_balance_alert(wallet, wallet_threshold, now)
            _enqueue_delivery(alert.pk)
            alerted += 1
    return SweepReport(
        alerted=alerted,
        disarmed=disarmed,
        rearmed=rearmed,
        redelivered=alerts_undelivered_requeue(now=now),
    )


def _month_start(now: dt.datetime) -> dt.date:
    return now.astimezone(dt.UTC).date().replace(day=1)


def _spend_alert(
    *,
    key: str,
    kind: str,
    organization: Organization,
    recipients: list[str],
    who: str,
    spent: int,
    limit: int,
    month: dt.date,
    now: dt.datetime,
) -> Alert | None:
    percent = settings.ORG_SPEND_ALERT_PERCENT
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                key=key,
                kind=kind,
                organization=organization,
                recipients=recipients,
                subject=f"{who} has used {percent}% of the monthly limit in {organization}",
                body=(
                    f"{who} has spent {money.format_credits(spent)} of the "
                    f"{money.format_credits(limit)} credits allowed in {month:%B %Y} for "
                    f"{organization}.\n"
                ),
                payload={
                    "type": kind,
                    "organization_id": organization.pk,
                    "spent_micro": spent,
                    "limit_micro": limit,
                    "month": month.isoformat(),
                },
                created_at=now,
            )
            _enqueue_delivery(alert.pk)
            return alert
    except IntegrityError:
        return None  # already alerted this month


def _managers(organization_id: int) -> list[str]:
    return sorted(
        {
            m.user.alert_email
            for m in Membership.objects.filter(
                organization_id=organization_id,
                role__in=[Membership.Role.OWNER, Membership.Role.ADMIN],
            ).select_related("user")
        }
    )


def organization_spend_sweep(*, now: dt.datetime | None = None) -> int:
    """Alert members and pools past ``ORG_SPEND_ALERT_PERCENT`` of their monthly limit,
    once per month each. Returns the number of alerts created."""
    now = now or timezone.now()
    month = _month_start(now)
    percent = settings.ORG_SPEND_ALERT_PERCENT
    created = 0
    members = (
        Membership.objects.filter(
            monthly_spend_limit_micro__gt=0, spend_month=month, spend_month_micro__gt=0
        )
        .alias(
            spent_scaled=F("spend_month_micro") * 100,
            limit_scaled=F("monthly_spend_limit_micro") * percent,
        )
        .filter(spent_scaled__gte=F("limit_scaled"))
        .select_related("user", "organization")
    )
    for member in members:
        assert member.monthly_spend_limit_micro is not None
        recipients = sorted({member.user.alert_email, *_managers(member.organization_id)})
        if _spend_alert(
            key=f"member-spend:{member.pk}:{month:%Y-%m}",
            kind=Alert.Kind.MEMBER_SPEND,
            organization=member.organization,
            recipients=recipients,
            who=member.user.email,
            spent=member.spend_month_micro,
            limit=member.monthly_spend_limit_micro,
            month=month,
            now=now,
        ):
            created += 1
    for organization in Organization.objects.filter(monthly_spend_limit_micro__gt=0):
        limit = organization.monthly_spend_limit_micro
        assert limit is not None
        # Every charge to a pool goes through a member's token, and capture counts it
        # against the member's month: the pool's spend is the members' sum.
        spent = sum(
            Membership.objects.filter(organization=organization, spend_month=month).values_list(
                "spend_month_micro", flat=True
            )
        )
        if spent * 100 < limit * percent:
            continue
        if _spend_alert(
            key=f"pool-spend:{organization.pk}:{month:%Y-%m}",
            kind=Alert.Kind.POOL_SPEND,
            organization=organization,
            recipients=_managers(organization.pk),
            who="The organization's pool",
            spent=spent,
            limit=limit,
            month=month,
            now=now,
        ):
            created += 1
    alerts_undelivered_requeue(now=now)
    return created


def alerts_undelivered_requeue(*, now: dt.datetime, older_than_minutes: int = 10) -> int:
    """Re-enqueue alerts whose email is still unsent a while after creation (the broker
    lost the task). Delivery is idempotent, so a duplicate task changes nothing."""
    since = now - dt.timedelta(days=2)
    until = now - dt.timedelta(minutes=older_than_minutes)
    pending = list(
        Alert.objects.filter(
            Q(email_sent_at__isnull=True) | (~Q(webhook_url="") & Q(webhook_sent_at__isnull=True)),
            created_at__gte=since,
            created_at__lte=until,
            webhook_attempts__lt=10,
        ).values_list("id", flat=True)[:500]
    )
    for alert_id in pending:
        _enqueue_delivery(alert_id)
    return len(pending)


def _claim(alert_id: int, field: str) -> bool:
    return bool(
        Alert.objects.filter(pk=alert_id, **{f"{field}__isnull": True}).update(
            **{field: timezone.now()}
        )
    )


def alert_email_send(*, alert_id: int) -> bool:
    """Send the alert's email, at most once. Returns whether it was sent now."""
    if not _claim(alert_id, "email_sent_at"):
        return False
    alert = Alert.objects.get(pk=alert_id)
    try:
        if alert.recipients:
            send_mail(alert.subject, alert.body, None, list(alert.recipients))
    except Exception:
        Alert.objects.filter(pk=alert_id).update(email_sent_at=None)
        raise
    return True


def alert_webhook_send(*, alert_id: int) -> bool:
    """POST the alert's JSON payload to the customer's webhook URL, once it succeeds.
    Raises ``httpx.HTTPError`` on failure (the task retries)."""
    alert = Alert.objects.get(pk=alert_id)
    if not alert.webhook_url or alert.webhook_sent_at is not None:
        return False
    Alert.objects.filter(pk=alert_id).update(webhook_attempts=F("webhook_attempts") + 1)
    try:
        response = httpx.post(
            alert.webhook_url,
            json=alert.payload,
            timeout=settings.ALERT_WEBHOOK_TIMEOUT_SECONDS,
            headers={"User-Agent": "credits-alerts/1"},
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        logger.warning("alert %s: webhook %s failed: %s", alert.pk, alert.webhook_url, exc)
        Alert.objects.filter(pk=alert_id).update(webhook_error=str(exc)[:1000])
        raise
    Alert.objects.filter(pk=alert_id, webhook_sent_at__isnull=True).update(
        webhook_sent_at=timezone.now(), webhook_error=""
    )
    return True
