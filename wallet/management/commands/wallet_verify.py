from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from wallet.verify import wallet_verify


class Command(BaseCommand):
    help = "Check every ledger invariant; exits non-zero with a report on any violation."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--wallet",
            type=int,
            action="append",
            dest="wallets",
            help="Only this wallet id (repeatable).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        violations = wallet_verify(wallet_ids=options["wallets"])
        if violations:
            for violation in violations:
                self.stderr.write(str(violation))
            raise CommandError(f"{len(violations)} ledger invariant violation(s) found.")
        self.stdout.write(self.style.SUCCESS("Ledger OK: every invariant holds."))
