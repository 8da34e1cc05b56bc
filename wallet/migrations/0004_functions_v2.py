"""Version 2 of the wallet's PostgreSQL functions: they also return the available credits
they leave behind, and a duplicate hold is an outcome rather than an error."""

from django.db import migrations

from wallet import sql


def _run(schema_editor, *statements: str) -> None:  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    # A plain cursor: the bodies contain "%" (RAISE formats), not query parameters.
    with schema_editor.connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    _run(schema_editor, sql.SETTLE_V2, sql.HOLD_CREATE_V2)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    _run(schema_editor, sql.DROP_V2, sql.SETTLE_V1, sql.CAPTURE_V1, sql.HOLD_CREATE_V1)


class Migration(migrations.Migration):
    dependencies = [("wallet", "0003_alerts")]
    operations = [migrations.RunPython(install, uninstall)]
