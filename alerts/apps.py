from django.apps import AppConfig


class AlertsConfig(AppConfig):
    """Customer alerts: low balance (email and optional webhook) and organization spend."""

    name = "alerts"
    default_auto_field = "django.db.models.BigAutoField"
