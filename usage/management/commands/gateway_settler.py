"""Settle the gateway's answered calls handed over by the web processes."""

from __future__ import annotations

import signal
import threading
from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from usage.gateway import handoff


class Command(BaseCommand):
    help = (
        "Run a gateway settler: capture the calls the web processes answered and handed "
        "over (usage.gateway.handoff). Run one or more beside the web processes; while "
        "none runs, each web process settles its own calls. Stops cleanly on SIGTERM."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--drain",
            action="store_true",
            help="Settle what is waiting (new or abandoned by a dead settler), then exit.",
        )
        parser.add_argument("--batch", type=int, default=64, help="Jobs read at a time.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.REDIS_URL:
            raise CommandError("REDIS_URL is not set: without Redis, web processes settle.")
        client = redis.Redis.from_url(settings.REDIS_URL)
        settler = handoff.Settler(client, batch=options["batch"])
        if options["drain"]:
            count = settler.drain()
            self.stdout.write(f"Settled {count} call(s).")
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.stdout.write(f"Gateway settler {settler.consumer} running.")
        settler.run(stop)
        self.stdout.write(f"Gateway settler stopped after settling {settler.settled} call(s).")
