from django.contrib import admin

from alerts.models import Alert
from config.admin_mixins import ReadOnlyMixin


@admin.register(Alert)
class AlertAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Alerts sent to customers (written by ``alerts.services``), with delivery state."""

    list_display = (
        "created_at",
        "kind",
        "key",
        "email_sent_at",
        "webhook_url",
        "webhook_sent_at",
        "webhook_attempts",
    )
    list_filter = ("kind", ("webhook_sent_at", admin.EmptyFieldListFilter))
    search_fields = ("key", "wallet__user__email", "organization__slug")
    date_hierarchy = "created_at"
    show_full_result_count = False
