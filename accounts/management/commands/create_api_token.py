from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import selectors, services
from accounts.models import ApiToken, Organization, TokenGroup
from config.errors import ApplicationError
from wallet.management.commands.grant_credits import _parse_expiry


def _list(values: list[str] | None) -> list[str]:
    """Accept both ``--scopes read metering`` and ``--scopes read,metering``."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


class Command(BaseCommand):
    help = "Create an API token and print its secret (shown this once only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", required=True, help="The token's owner.")
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scopes",
            nargs="+",
            default=[ApiToken.Scope.METERING, ApiToken.Scope.READ],
            help="inference, metering, read (default: metering read).",
        )
        parser.add_argument("--group", help="Token group name (default: the default group).")
        parser.add_argument("--quota", help="Most the token may spend, in credits.")
        parser.add_argument("--org", help="Spend from this organization's pool (slug).")
        parser.add_argument("--expires", help="Expiry date (YYYY-MM-DD) or ISO datetime, UTC.")
        parser.add_argument("--models", nargs="+", help="Allowed model ids or patterns.")
        parser.add_argument("--ips", nargs="+", help="Allowed IP addresses or CIDR ranges.")
        parser.add_argument(
            "--budget", nargs=2, metavar=("PERIOD", "CREDITS"), help="e.g. --budget daily 50"
        )
        parser.add_argument("--rpm", type=int, help="Most model requests per minute.")
        parser.add_argument("--tpm", type=int, help="Most tokens per minute.")
        parser.add_argument(
            "--log-content", action="store_true", help="Keep prompts and responses."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = selectors.user_get_by_email(email=options["email"])
        if user is None:
            raise CommandError(f"No user with email {options['email']}.")
        group = None
        if options["group"]:
            group = TokenGroup.objects.filter(name=options["group"]).first()
            if group is None:
                raise CommandError(f"No token group named {options['group']!r}.")
        organization = None
        if options["org"]:
            organization = Organization.objects.filter(slug=options["org"]).first()
            if organization is None:
                raise CommandError(f"No organization with slug {options['org']!r}.")
        try:
            token, secret = services.api_token_create(
                user=user,
                name=options["name"],
                scopes=_list(options["scopes"]),
                group=group,
                organization=organization,
                quota_credits=options["quota"],
                expires_at=_parse_expiry(options["expires"]),
                allowed_models=_list(options["models"]),
                allowed_ips=_list(options["ips"]),
                budget_period=(options["budget"] or ["", None])[0],
                budget_credits=(options["budget"] or ["", None])[1],
                rate_limit_rpm=options["rpm"],
                rate_limit_tpm=options["tpm"],
                log_content=options["log_content"],
            )
        except ApplicationError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from exc
        self.stderr.write(
            f"Created token {token.pk} {token.display_prefix}… for {user.email} "
            f"(scopes {', '.join(token.scopes)}; group {token.group.name}). "
            "The secret below is shown only once:"
        )
        self.stdout.write(secret)
