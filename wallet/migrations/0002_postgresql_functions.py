"""Install the settle/capture functions and the append-only ledger trigger on PostgreSQL.
Other databases run the Python twin of the settle step and rely on the model's guard."""

from django.db import migrations

from config.sql import run_on_postgresql
from wallet import sql


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(
        schema_editor,
        sql.SETTLE_V1,
        sql.CAPTURE_V1,
        sql.HOLD_CREATE_V1,
        sql.APPEND_ONLY_V1,
        sql.FILLFACTOR_V1,
    )


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.DROP_V1)


class Migration(migrations.Migration):
    dependencies = [("wallet", "0001_initial")]
    operations = [migrations.RunPython(install, uninstall)]
