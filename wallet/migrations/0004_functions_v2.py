"""Version 2 of the wallet's PostgreSQL functions: they also return the available credits
they leave behind, and a duplicate hold is an outcome rather than an error."""

from django.db import migrations

from config.sql import run_on_postgresql
from wallet import sql


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.SETTLE_V2, sql.HOLD_CREATE_V2)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.DROP_V2, sql.SETTLE_V1, sql.CAPTURE_V1, sql.HOLD_CREATE_V1)


class Migration(migrations.Migration):
    dependencies = [("wallet", "0003_alerts")]
    operations = [migrations.RunPython(install, uninstall)]
