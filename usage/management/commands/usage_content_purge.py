from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from usage import services


class Command(BaseCommand):
    help = (
        "Delete logged request content (prompts, responses) older than "
        "CONTENT_RETENTION_DAYS. Usage records and charges are kept. Safe to run any time."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        deleted = services.usage_content_purge()
        self.stdout.write(
            f"Deleted the content of {deleted} request(s) older than "
            f"{settings.CONTENT_RETENTION_DAYS} days."
        )
