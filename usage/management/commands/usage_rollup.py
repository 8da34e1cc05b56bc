"""Roll up usage records into daily sums (what the console reads)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from usage import rollups


class Command(BaseCommand):
    help = (
        "Roll up every finished UTC day not yet rolled up (the default), or recompute the "
        "given days. Idempotent: safe to run twice or beside the scheduled job."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--day", action="append", default=[], help="YYYY-MM-DD to recompute (repeatable)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["day"]:
            try:
                days = [dt.date.fromisoformat(text) for text in options["day"]]
            except ValueError as exc:
                raise CommandError(f"Days are written YYYY-MM-DD: {exc}") from exc
            rows = rollups.usage_rollup_days(days=days)
            self.stdout.write(f"Recomputed {len(set(days))} day(s): {rows} rollup row(s).")
            return
        done = rollups.usage_rollup_catch_up()
        if done:
            self.stdout.write(f"Rolled up {len(done)} day(s): {done[0]} to {done[-1]}.")
        else:
            self.stdout.write("Nothing to roll up: every finished day is already rolled up.")
