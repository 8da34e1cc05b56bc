from django.apps import AppConfig


class RedemptionConfig(AppConfig):
    name = "redemption"
    default_auto_field = "django.db.models.BigAutoField"
