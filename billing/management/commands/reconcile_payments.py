from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing import services


class Command(BaseCommand):
    help = (
        "Ask the payment provider about top-up orders still pending and complete or cancel "
        "them; retry failed webhook events and interrupted refunds. Safe to run any time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=int,
            default=None,
            metavar="MINUTES",
            help="Only orders created at least this long ago "
            "(default BILLING_RECONCILE_AFTER_MINUTES).",
        )
        parser.add_argument("--limit", type=int, default=None, help="Most orders per pass.")
        parser.add_argument(
            "--time-budget", type=float, default=600.0, help="Stop after this many seconds."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = services.payments_reconcile(
            older_than_minutes=options["older_than"],
            limit=options["limit"],
            time_budget_seconds=options["time_budget"],
        )
        for line in report.messages:
            self.stdout.write(line)
        style = self.style.WARNING if report.errors else self.style.SUCCESS
        self.stdout.write(style(report.summary()))
