from typing import Any

from django.core.management.base import BaseCommand

from alerts import services


class Command(BaseCommand):
    help = (
        "Alert wallets that crossed below their low-balance threshold and re-arm those back "
        "above it (beat: every minute). Each dip alerts once however often this runs."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(str(services.low_balance_sweep()))
