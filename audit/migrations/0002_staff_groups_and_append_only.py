"""The Support and Finance groups (their permissions are set after every migrate by
``audit.permissions.groups_sync``), and a trigger that refuses UPDATE and DELETE on the
audit trail on PostgreSQL (other databases rely on the model's guard)."""

from django.db import migrations

from config.sql import run_on_postgresql

APPEND_ONLY = r"""
CREATE OR REPLACE FUNCTION audit_record_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
DROP TRIGGER IF EXISTS audit_auditrecord_append_only ON audit_auditrecord;
CREATE TRIGGER audit_auditrecord_append_only
    BEFORE UPDATE OR DELETE ON audit_auditrecord
    FOR EACH ROW EXECUTE FUNCTION audit_record_append_only();
"""

DROP = r"""
DROP TRIGGER IF EXISTS audit_auditrecord_append_only ON audit_auditrecord;
DROP FUNCTION IF EXISTS audit_record_append_only();
"""


def create_groups(apps, schema_editor):  # type: ignore[no-untyped-def]
    Group = apps.get_model("auth", "Group")
    for name in ("Support", "Finance"):
        Group.objects.get_or_create(name=name)


def install_trigger(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, APPEND_ONLY)


def uninstall_trigger(apps, schema_editor):  # type: ignore[no-untyped-def]
    run_on_postgresql(schema_editor, DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.RunPython(create_groups, migrations.RunPython.noop),
        migrations.RunPython(install_trigger, uninstall_trigger),
    ]
