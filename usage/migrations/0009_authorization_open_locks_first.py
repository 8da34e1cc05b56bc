"""``usage_authorization_open`` V2: key-share locks on the token and membership before
the wallet (``usage.sql``)."""

from django.db import migrations

from config.sql import run_on_postgresql
from usage import sql


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.AUTHORIZATION_OPEN_V2)


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, sql.AUTHORIZATION_OPEN_V1_REPLACE)


class Migration(migrations.Migration):
    dependencies = [("usage", "0008_capture_counted_function")]
    operations = [migrations.RunPython(install, uninstall)]
