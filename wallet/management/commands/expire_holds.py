from typing import Any

from django.core.management.base import BaseCommand

from wallet import tasks


class Command(BaseCommand):
    help = "Expire holds past their expiry (beat runs this every minute). Safe to re-run."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"expired {tasks.holds_expire()} hold(s)")
