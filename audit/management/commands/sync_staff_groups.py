from typing import Any

from django.core.management.base import BaseCommand

from audit import permissions


class Command(BaseCommand):
    help = "Set the Support and Finance groups' permissions from audit/permissions.py."

    def handle(self, *args: Any, **options: Any) -> None:
        permissions.groups_sync()
        self.stdout.write("staff groups synced")
