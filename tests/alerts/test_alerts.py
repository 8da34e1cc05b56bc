"""Low-balance and organization spend alerts: once per crossing (or per month), re-armed,
delivered after commit, webhook failures retried without touching money or the email."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from accounts import services as account_services
from alerts import services
from alerts.models import Alert
from tests.alerts.conftest import spend
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, credit, micro, refresh
from wallet import services as wallet_services
from wallet.models import Wallet

pytestmark = pytest.mark.django_db


@pytest.fixture
def sweep(django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    """Run the sweep and its after-commit deliveries, as beat and a worker would."""

    def run(**kwargs):  # type: ignore[no-untyped-def]
        with django_capture_on_commit_callbacks(execute=True):
            return services.low_balance_sweep(**kwargs)

    return run


def test_a_low_balance_alert_is_sent_once_per_crossing_and_rearmed(user, sweep) -> None:
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "1500")  # above the default threshold of 1,000 credits
    sweep()
    assert mail.outbox == []
    spend(wallet, "1000")
    assert sweep().alerted == 1
    assert sweep().alerted == 0  # run twice: the effect of once
    spend(wallet, "100")  # lower still: the same dip
    sweep()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [user.email] and "500.00" in message.subject
    assert refresh(wallet).low_balance_alerted_at is not None
    credit(wallet, "1000")  # 1,400: above again
    assert sweep().rearmed == 1
    assert refresh(wallet).low_balance_alerted_at is None
    spend(wallet, "600")  # 800: crossed again
    sweep()
    sweep()
    assert len(mail.outbox) == 2
    assert Alert.objects.filter(wallet=wallet).count() == 2
    assert_ledger_ok(wallet)


def test_an_account_never_above_its_threshold_gets_no_alert(user, sweep) -> None:
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "10")
    sweep()
    sweep()
    assert mail.outbox == [] and not Alert.objects.exists()
    assert refresh(wallet).low_balance_alerted_at is not None  # disarmed until above


def test_the_owners_threshold_and_notification_email_are_used(user, sweep) -> None:
    wallet = Wallet.objects.get(user=user)
    account_services.user_update_notifications(user=user, notification_email="ops@example.com")
    wallet_services.wallet_set_low_balance_threshold(wallet=wallet, threshold_micro=micro("20"))
    credit(wallet, "30")
    sweep()
    spend(wallet, "15")
    sweep()
    assert [m.to for m in mail.outbox] == [["ops@example.com"]]


def test_the_customer_webhook_gets_the_alert(user, sweep, hook) -> None:
    wallet = Wallet.objects.get(user=user)
    account_services.user_update_notifications(user=user, alert_webhook_url=hook.url)
    credit(wallet, "2000")
    spend(wallet, "1500")
    sweep()
    (payload,) = hook.received
    assert payload["type"] == "wallet.low_balance" and payload["balance_micro"] == micro("500")
    alert = Alert.objects.get()
    assert alert.webhook_sent_at is not None and alert.email_sent_at is not None


def test_a_failing_webhook_is_retried_and_never_resends_the_email(user, hook) -> None:
    wallet = Wallet.objects.get(user=user)
    account_services.user_update_notifications(user=user, alert_webhook_url=hook.url)
    credit(wallet, "2000")
    spend(wallet, "1500")
    hook.status = 500
    services.low_balance_sweep()  # deliveries are not run here: we drive them by hand
    alert = Alert.objects.get()
    assert services.alert_email_send(alert_id=alert.pk) is True
    with pytest.raises(httpx.HTTPStatusError):
        services.alert_webhook_send(alert_id=alert.pk)
    hook.status = 200
    # The retry (Celery's autoretry runs the whole delivery again).
    assert services.alert_email_send(alert_id=alert.pk) is False
    assert services.alert_webhook_send(alert_id=alert.pk) is True
    assert services.alert_webhook_send(alert_id=alert.pk) is False
    alert.refresh_from_db()
    assert alert.webhook_attempts == 2 and alert.webhook_error == ""
    assert len(mail.outbox) == 1 and len(hook.received) == 2
    assert refresh(wallet).balance == micro("500")


def test_an_undelivered_alert_is_requeued_by_the_next_sweep(
    user, django_capture_on_commit_callbacks
):
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "2000")
    spend(wallet, "1500")
    services.low_balance_sweep()  # its delivery is "lost" (never run)
    assert mail.outbox == []
    later = timezone.now() + dt.timedelta(minutes=15)
    with django_capture_on_commit_callbacks(execute=True):
        services.low_balance_sweep(now=later)
    assert len(mail.outbox) == 1


def test_the_command_runs_the_sweep(user) -> None:
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "2000")
    spend(wallet, "1500")
    call_command("send_low_balance_alerts")
    assert Alert.objects.count() == 1
    call_command("send_low_balance_alerts")
    assert Alert.objects.count() == 1


# --- Organizations --------------------------------------------------------------------------


@pytest.fixture
def team(organization):  # type: ignore[no-untyped-def]
    owner = organization.memberships.get().user
    member = UserFactory()
    membership = account_services.membership_add(
        organization=organization, user=member, actor=owner, monthly_spend_limit_credits="100"
    )
    return organization, owner, membership


def _spend(membership, credits: str) -> None:  # type: ignore[no-untyped-def]
    account_services.membership_spend_add(
        membership_id=membership.pk, amount=micro(credits), now=timezone.now()
    )


def test_a_member_past_the_share_of_its_limit_alerts_once_a_month(
    team, django_capture_on_commit_callbacks, settings
) -> None:
    settings.ORG_SPEND_ALERT_PERCENT = 80
    _, owner, membership = team
    _spend(membership, "79.99")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.organization_spend_sweep() == 0
    _spend(membership, "0.01")  # exactly 80%
    with django_capture_on_commit_callbacks(execute=True):
        assert services.organization_spend_sweep() == 1
        assert services.organization_spend_sweep() == 0
    (message,) = mail.outbox
    assert set(message.to) == {membership.user.email, owner.email}
    assert "80%" in message.subject
    next_month = timezone.now() + dt.timedelta(days=32)
    assert services.organization_spend_sweep(now=next_month) == 0  # nothing spent there yet


def test_the_pool_past_the_share_of_its_limit_alerts_the_managers(team, settings) -> None:
    settings.ORG_SPEND_ALERT_PERCENT = 50
    organization, owner, membership = team
    organization.monthly_spend_limit_micro = micro("100")
    organization.save()
    owner_membership = organization.memberships.get(user=owner)
    _spend(owner_membership, "30")
    _spend(membership, "19")
    assert services.organization_spend_sweep() == 0
    _spend(membership, "1")
    assert services.organization_spend_sweep() == 1
    call_command("send_spend_alerts")
    alert = Alert.objects.get(kind="pool_spend")
    assert alert.recipients == [owner.email] and alert.payload["spent_micro"] == micro("50")
