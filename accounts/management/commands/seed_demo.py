import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from accounts import selectors, services
from accounts.models import Organization
from billing.demo import billing_demo_seed
from redemption.demo import redemption_demo_seed
from referrals.demo import referrals_demo_seed
from usage import demo as usage_demo
from wallet import money
from wallet import selectors as wallet_selectors
from wallet import services as wallet_services
from wallet.models import CreditLot

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password-123"  # noqa: S105 (published demo log-in)
STAFF_EMAIL = "admin@example.com"
STAFF_PASSWORD = "admin-password-123"  # noqa: S105 (published demo log-in)


class Command(BaseCommand):
    help = "Create demo users, an organization and credits. Safe to run more than once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet", action="store_true")

    def _staff_roles(self) -> None:
        """A Support and a Finance member (password as the admin's) to try the roles."""
        from django.contrib.auth.models import Group

        from audit import permissions

        permissions.groups_sync()
        for group in (permissions.SUPPORT, permissions.FINANCE):
            email = f"{group.lower()}@example.com"
            user = selectors.user_get_by_email(email=email) or services.user_create(
                email=email, password=STAFF_PASSWORD, full_name=f"{group} Staff", is_staff=True
            )
            user.groups.add(Group.objects.get(name=group))

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        demo = selectors.user_get_by_email(email=DEMO_EMAIL) or services.user_create(
            email=DEMO_EMAIL, password=DEMO_PASSWORD, full_name="Dana Demo", country="US"
        )
        teammate = selectors.user_get_by_email(
            email="teammate@example.com"
        ) or services.user_create(
            email="teammate@example.com", password=DEMO_PASSWORD, full_name="Toni Teammate"
        )
        if selectors.user_get_by_email(email=STAFF_EMAIL) is None:
            services.user_create(
                email=STAFF_EMAIL,
                password=STAFF_PASSWORD,
                full_name="Sam Support",
                is_staff=True,
                is_superuser=True,
            )
        self._staff_roles()
        org = Organization.objects.filter(slug="demo-team").first() or services.organization_create(
            name="Demo Team", owner=demo, slug="demo-team"
        )
        if selectors.membership_get(organization=org, user=teammate) is None:
            services.membership_add(
                organization=org, user=teammate, actor=demo, monthly_spend_limit_credits="50"
            )
        source = wallet_services.Ref("operator", "seed_demo")
        wallet = wallet_selectors.wallet_get_for_user(user=demo)
        wallet_services.wallet_credit(
            wallet=wallet,
            amount=money.credits_to_micro("25"),
            category=CreditLot.Category.PAID,
            idempotency_key="seed-demo:paid",
            reference=source,
            reason="Demo data",
        )
        wallet_services.wallet_credit(
            wallet=wallet,
            amount=money.credits_to_micro("5"),
            category=CreditLot.Category.PROMOTIONAL,
            idempotency_key="seed-demo:promo",
            reference=source,
            reason="Demo data",
            expires_at=timezone.now() + dt.timedelta(days=30),
        )
        wallet_services.wallet_credit(
            wallet=wallet_selectors.wallet_get_for_organization(organization=org),
            amount=money.credits_to_micro("200"),
            category=CreditLot.Category.PAID,
            idempotency_key="seed-demo:org",
            reference=source,
            reason="Demo data",
        )
        staff = selectors.user_get_by_email(email=STAFF_EMAIL)
        billing_demo_seed(user=demo, staff=staff)
        codes = redemption_demo_seed(staff=staff)
        referrals_demo_seed(inviter=demo, staff=staff, password=DEMO_PASSWORD)
        secrets = usage_demo.seed(user=demo, organization=org)
        if not options["quiet"]:
            for name, secret in secrets.items():
                self.stdout.write(f"API token {name!r} (shown once): {secret}")
            self.stdout.write(
                self.style.SUCCESS(
                    f"Demo ready. Log in as {DEMO_EMAIL} / {DEMO_PASSWORD} "
                    f"(staff: {STAFF_EMAIL} / {STAFF_PASSWORD})."
                )
            )
            self.stdout.write(f"Redemption codes to try at /redeem/: {', '.join(codes)}")
