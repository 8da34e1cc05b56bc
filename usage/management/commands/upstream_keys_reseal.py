"""Re-seal the gateway's upstream API keys under the current UPSTREAM_KEY_SECRET."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from usage import channels, keybox


class Command(BaseCommand):
    help = (
        "After setting a new UPSTREAM_KEY_SECRET (the old one listed in "
        "UPSTREAM_KEY_PREVIOUS_SECRETS), seal every stored upstream key under the new one. "
        "All or nothing; safe to run twice."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = channels.upstream_keys_reseal()
        except keybox.KeyUnreadable as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Re-sealed {count} upstream key(s) under the current secret.")
