"""``usage_authorization_open`` V3 and ``usage_capture_counted`` V2: refuse to act for a
cached token whose state has changed (``usage.sql``)."""

from django.db import migrations

from config.sql import run_on_postgresql
from usage import sql


def install(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(
        schema_editor,
        sql.DROP_AUTHORIZATION_OPEN_V1,  # V2 has V1's arguments
        sql.AUTHORIZATION_OPEN_V3,
        sql.DROP_CAPTURE_COUNTED_V1,
        sql.CAPTURE_COUNTED_V2,
    )


def uninstall(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(
        schema_editor,
        sql.DROP_AUTHORIZATION_OPEN_V3,
        sql.AUTHORIZATION_OPEN_V2,
        sql.DROP_CAPTURE_COUNTED_V2,
        sql.CAPTURE_COUNTED_V1,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0009_authorization_open_locks_first"),
        ("accounts", "0008_token_state_function"),
    ]
    operations = [migrations.RunPython(install, uninstall)]
