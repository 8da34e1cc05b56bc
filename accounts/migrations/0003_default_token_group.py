from decimal import Decimal

from django.db import migrations


def create_default_group(apps, schema_editor):
    BillingTier = apps.get_model("accounts", "BillingTier")
    TokenGroup = apps.get_model("accounts", "TokenGroup")
    tier, _ = BillingTier.objects.get_or_create(
        name="standard",
        defaults={"rate": Decimal("1.0"), "description": "List price"},
    )
    if not TokenGroup.objects.filter(is_default=True).exists():
        TokenGroup.objects.get_or_create(
            name="default",
            defaults={
                "tier": tier,
                "is_default": True,
                "description": "Every model at the standard rate",
            },
        )


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_api_tokens")]

    operations = [migrations.RunPython(create_default_group, migrations.RunPython.noop)]
