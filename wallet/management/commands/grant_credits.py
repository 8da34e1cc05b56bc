import datetime as dt
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from accounts import selectors as account_selectors
from config.errors import ApplicationError
from wallet import money, services
from wallet import selectors as wallet_selectors
from wallet.models import CreditLot


def _parse_expiry(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(f"--expires {value!r} is not a date (YYYY-MM-DD) or datetime.")
        moment = dt.datetime.combine(day, dt.time.min)
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, dt.UTC)


class Command(BaseCommand):
    help = "Grant credits to a user's wallet (an operator action, recorded with its reason)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", required=True)
        parser.add_argument("--credits", required=True, help="Credits, e.g. 25 or 12.5")
        parser.add_argument("--category", required=True, choices=CreditLot.Category.values)
        parser.add_argument("--reason", required=True)
        parser.add_argument("--expires", help="Expiry date (YYYY-MM-DD) or ISO datetime, UTC.")
        parser.add_argument(
            "--idempotency-key", help="Re-running with the same key grants once (default: random)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = account_selectors.user_get_by_email(email=options["email"])
        if user is None:
            raise CommandError(f"No user with email {options['email']}.")
        if not options["reason"].strip():
            raise CommandError("--reason must not be empty.")
        try:
            amount = money.credits_to_micro(options["credits"], field="credits")
            entry = services.wallet_credit(
                wallet=wallet_selectors.wallet_get_for_user(user=user),
                amount=amount,
                category=options["category"],
                idempotency_key=options["idempotency_key"] or f"grant:{uuid.uuid4()}",
                reference=services.Ref("operator", "grant_credits"),
                expires_at=_parse_expiry(options["expires"]),
                reason=options["reason"].strip(),
            )
        except ApplicationError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Granted {money.format_credits(entry.amount)} {options['category']} credits to "
                f"{user.email}; balance is now {money.format_credits(entry.balance_after)}."
            )
        )
