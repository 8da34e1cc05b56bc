"""The default catalogue (editable in the admin afterwards): four packages, six preset
amounts, and the bonus table of DESIGN.md with its boundaries made exact (minor units,
both ends inclusive):

    $0.01 - $99.99      0%
    $100.00 - $499.99   3%
    $500.00 - $999.99   4%
    $1,000.00 exactly   10%
    $1,000.01 and up    12%   ("over $1,000": $2,000 gives 2,240)
"""

from django.db import migrations

PACKAGES = [
    # code, name, kind, cents, sort, description
    ("starter", "Starter", "package", 1_000, 10, "Try it out"),
    ("plus", "Plus", "package", 5_000, 20, "For regular use"),
    ("pro", "Pro", "package", 20_000, 30, "3% bonus credits"),
    ("business", "Business", "package", 100_000, 40, "10% bonus credits"),
    ("usd-10", "$10", "amount", 1_000, 10, ""),
    ("usd-20", "$20", "amount", 2_000, 20, ""),
    ("usd-50", "$50", "amount", 5_000, 30, ""),
    ("usd-100", "$100", "amount", 10_000, 40, ""),
    ("usd-200", "$200", "amount", 20_000, 50, ""),
    ("usd-500", "$500", "amount", 50_000, 60, ""),
]

BONUS_RULES = [
    # min cents, max cents (inclusive; None = no limit), percent, note
    (0, 9_999, "0", "under $100"),
    (10_000, 49_999, "3", "$100 to $499.99"),
    (50_000, 99_999, "4", "$500 to $999.99"),
    (100_000, 100_000, "10", "exactly $1,000"),
    (100_001, None, "12", "over $1,000"),
]


def create_defaults(apps, schema_editor):
    TopUpPackage = apps.get_model("billing", "TopUpPackage")
    BonusRule = apps.get_model("billing", "BonusRule")
    for code, name, kind, cents, sort, description in PACKAGES:
        TopUpPackage.objects.get_or_create(
            code=code,
            defaults={
                "name": name,
                "kind": kind,
                "amount_minor": cents,
                "currency": "usd",
                "sort_order": sort,
                "description": description,
            },
        )
    if not BonusRule.objects.filter(currency="usd").exists():
        for low, high, percent, note in BONUS_RULES:
            BonusRule.objects.create(
                currency="usd",
                min_amount_minor=low,
                max_amount_minor=high,
                percent=percent,
                note=note,
            )


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(create_defaults, migrations.RunPython.noop)]
