from typing import Any

from django.core.management.base import BaseCommand

from billing import services


class Command(BaseCommand):
    help = "Grant this month's recurring plan credits (beat: hourly); once per grant and month."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"applied {services.recurring_grants_run()} grant(s)")
