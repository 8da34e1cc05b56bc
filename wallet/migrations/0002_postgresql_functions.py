"""Install the settle/capture functions and the append-only ledger trigger on PostgreSQL.
Other databases run the Python twin of the settle step and rely on the model's guard."""

from django.db import migrations

from wallet import sql


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        # A plain cursor: the function bodies contain "%" (RAISE formats), which the
        # schema editor would take for query parameters.
        with schema_editor.connection.cursor() as cursor:
            for statement in (
                sql.SETTLE_V1,
                sql.CAPTURE_V1,
                sql.HOLD_CREATE_V1,
                sql.APPEND_ONLY_V1,
                sql.FILLFACTOR_V1,
            ):
                cursor.execute(statement)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(sql.DROP_V1)


class Migration(migrations.Migration):
    dependencies = [("wallet", "0001_initial")]
    operations = [migrations.RunPython(install, uninstall)]
