"""Upstream API keys are stored sealed (``usage.keybox``): widen the column and seal the
keys stored in clear before."""

from django.db import migrations, models

from usage import keybox


def seal_stored_keys(apps, schema_editor):  # type: ignore[no-untyped-def]
    channels = apps.get_model("usage", "UpstreamChannel")
    for channel in channels.objects.exclude(api_key="").only("pk", "api_key"):
        if not keybox.is_sealed(channel.api_key):
            channels.objects.filter(pk=channel.pk).update(api_key=keybox.seal(channel.api_key))


def open_stored_keys(apps, schema_editor):  # type: ignore[no-untyped-def]
    channels = apps.get_model("usage", "UpstreamChannel")
    for channel in channels.objects.exclude(api_key="").only("pk", "api_key"):
        channels.objects.filter(pk=channel.pk).update(api_key=keybox.unseal(channel.api_key))


class Migration(migrations.Migration):
    dependencies = [("usage", "0006_capture_function")]
    operations = [
        migrations.AlterField(
            model_name="upstreamchannel",
            name="api_key",
            field=models.CharField(blank=True, help_text="Sealed (usage.keybox).", max_length=1000),
        ),
        migrations.RunPython(seal_stored_keys, open_stored_keys),
    ]
