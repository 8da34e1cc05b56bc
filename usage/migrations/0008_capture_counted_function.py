"""A capture's common case, spend counters included, as one statement (``usage.sql``)."""

from django.db import migrations

from config.sql import run_on_postgresql
from usage import sql


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.CAPTURE_COUNTED_V1)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.DROP_CAPTURE_COUNTED_V1)


class Migration(migrations.Migration):
    dependencies = [("usage", "0007_upstream_keys_sealed"), ("accounts", "0007_organization_invitations")]
    operations = [migrations.RunPython(install, uninstall)]
