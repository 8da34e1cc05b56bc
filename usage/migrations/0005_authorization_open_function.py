"""The authorization fast path as one PostgreSQL function (``usage.sql``)."""

from django.db import migrations

from config.sql import run_on_postgresql
from usage import sql


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.AUTHORIZATION_OPEN_V1)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.DROP_AUTHORIZATION_OPEN_V1)


class Migration(migrations.Migration):
    dependencies = [("usage", "0004_usage_daily"), ("wallet", "0005_wallet_min_balance_micro_and_more")]
    operations = [migrations.RunPython(install, uninstall)]
