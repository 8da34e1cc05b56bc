from typing import Any

from django.core.management.base import BaseCommand

from wallet import tasks


class Command(BaseCommand):
    help = "Write the expiry entry of every lot past its expiry (beat: hourly). Safe to re-run."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"expired {tasks.lots_expire()} lot(s)")
