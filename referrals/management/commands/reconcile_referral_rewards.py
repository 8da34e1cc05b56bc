import datetime as dt
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from referrals import services


class Command(BaseCommand):
    help = "Pay rewards and apply reversals that top-up follow-ups missed (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=settings.REFERRAL_RECONCILE_DAYS,
            help="Look at top-ups completed in the last N days.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        since = timezone.now() - dt.timedelta(days=options["days"])
        looked_at = services.referral_rewards_reconcile(since=since)
        self.stdout.write(f"Checked {looked_at} top-up(s) of invited accounts.")
