"""A capture's common case as one PostgreSQL function (``usage.sql``)."""

from django.db import migrations

from config.sql import run_on_postgresql
from usage import sql


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.CAPTURE_V1)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.DROP_CAPTURE_V1)


class Migration(migrations.Migration):
    dependencies = [("usage", "0005_authorization_open_function")]
    operations = [migrations.RunPython(install, uninstall)]
