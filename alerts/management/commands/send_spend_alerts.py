from typing import Any

from django.core.management.base import BaseCommand

from alerts import services


class Command(BaseCommand):
    help = (
        "Alert organization members and pools past ORG_SPEND_ALERT_PERCENT of their monthly "
        "limit (beat: every 5 minutes); once per member or pool and month."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"created {services.organization_spend_sweep()} alert(s)")
