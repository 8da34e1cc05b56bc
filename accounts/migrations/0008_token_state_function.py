"""``accounts_token_state``: the digest of what a token's requests read (``accounts.sql``)."""

from django.db import migrations

from accounts import sql
from config.sql import run_on_postgresql


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.STATE_FUNCTION_V1)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.DROP_STATE_FUNCTION_V1)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0007_organization_invitations"),
        ("wallet", "0005_wallet_min_balance_micro_and_more"),
    ]
    operations = [migrations.RunPython(install, uninstall)]
