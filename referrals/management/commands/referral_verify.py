from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from referrals.verify import referral_verify


class Command(BaseCommand):
    help = "Check every reward account against its ledger; non-zero exit on a violation."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", type=int, action="append", dest="accounts")

    def handle(self, *args: Any, **options: Any) -> None:
        problems = referral_verify(options["accounts"])
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"{len(problems)} violations.")
        self.stdout.write(self.style.SUCCESS("Every reward account is consistent."))
