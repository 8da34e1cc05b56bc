from django.apps import AppConfig

# Every admin registered for these apps is audited (see ``audit.admin_mixins``).
AUDITED_APPS = {
    "auth",
    "accounts",
    "wallet",
    "billing",
    "usage",
    "referrals",
    "redemption",
    "alerts",
}


class AuditConfig(AppConfig):
    """Staff tooling: the audit trail, the staff permission groups and the staff actions
    (adjustments, promotional grants, account disabling, token revocation, charge
    corrections) that the admin calls."""

    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from audit import permissions

        # Every app's post_migrate (after auth has created that app's permissions), so a
        # model added later by any app joins the groups on its first migrate.
        post_migrate.connect(permissions.groups_sync_on_migrate, dispatch_uid="audit-groups")
        self._audit_admins()

    def _audit_admins(self) -> None:
        """Make every registered admin of the business apps audited. Runs after the admin
        autodiscovered every ``admin.py`` (django.contrib.admin is ready first), so admins
        added by any app, now or later, are covered without being edited."""
        from django.contrib import admin

        from audit.admin_mixins import AuditedAdminMixin

        site = admin.site
        for model, model_admin in list(site._registry.items()):
            if isinstance(model_admin, AuditedAdminMixin):
                continue
            if model._meta.app_label not in AUDITED_APPS:
                continue
            cls = type(model_admin)
            site.unregister(model)
            site.register(model, type(f"Audited{cls.__name__}", (AuditedAdminMixin, cls), {}))
