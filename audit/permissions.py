"""The two staff groups and what each may do, declared here and applied on every migrate.

The groups themselves are created by a data migration; their permissions are (re)set by
``groups_sync`` after each ``migrate``, from the lists below. Entries naming a model or a
permission that does not exist (yet) are skipped, so a model added later by another app
(``usage.upstreamchannel``) joins its group on the first migrate that creates it. The lists
are the source of truth: a permission added to a group by hand is removed on the next
migrate; change the lists instead.
"""

from __future__ import annotations

from typing import Any

SUPPORT = "Support"
FINANCE = "Finance"

# Both groups see every record of these apps (and new models of them, automatically).
VIEW_APPS = (
    "accounts",
    "wallet",
    "billing",
    "usage",
    "referrals",
    "redemption",
    "audit",
    "alerts",
)

# "app_label.codename"
SUPPORT_PERMISSIONS = (
    "audit.adjust_balance",
    "audit.correct_charge",
    "audit.disable_account",
    "audit.revoke_tokens",
    # Revoke a token, change its group or limits.
    "accounts.change_apitoken",
    # Disable and re-enable redemption codes and batches.
    "redemption.change_redemptionbatch",
    "redemption.change_redemptioncode",
    # Re-process a webhook event, ask the provider about an order.
    "billing.change_webhookevent",
)

FINANCE_PERMISSIONS = (
    *SUPPORT_PERMISSIONS,
    "audit.adjust_balance_unlimited",
    "audit.read_margin_report",
    "billing.refund_topuporder",
    "billing.confirm_topuporder",
    "billing.add_topuppackage",
    "billing.change_topuppackage",
    "billing.add_bonusrule",
    "billing.change_bonusrule",
    "billing.add_recurringgrant",
    "billing.change_recurringgrant",
    "usage.add_modelprice",
    "accounts.add_billingtier",
    "accounts.change_billingtier",
    "accounts.add_tokengroup",
    "accounts.change_tokengroup",
    "accounts.change_organization",
    "accounts.change_membership",
    "usage.add_upstreamchannel",
    "usage.change_upstreamchannel",
    "referrals.add_rewardrule",
    "referrals.change_rewardrule",
    "redemption.add_redemptionbatch",
)

GROUPS = {SUPPORT: SUPPORT_PERMISSIONS, FINANCE: FINANCE_PERMISSIONS}


def _wanted(permission_model: Any, codenames: tuple[str, ...]) -> list[Any]:
    view = permission_model.objects.filter(
        content_type__app_label__in=VIEW_APPS, codename__startswith="view_"
    )
    wanted = {p.pk: p for p in view}
    for name in codenames:
        app_label, _, codename = name.partition(".")
        found = permission_model.objects.filter(
            content_type__app_label=app_label, codename=codename
        ).first()
        if found is not None:  # a model or app not installed yet
            wanted[found.pk] = found
    return list(wanted.values())


def groups_sync(*, group_model: Any = None, permission_model: Any = None) -> None:
    """Give each staff group exactly its declared permissions (creating the group if a
    database predates the migration)."""
    from django.contrib.auth.models import Group, Permission

    group_model = group_model or Group
    permission_model = permission_model or Permission
    for name, codenames in GROUPS.items():
        group, _ = group_model.objects.get_or_create(name=name)
        group.permissions.set(_wanted(permission_model, codenames))


def groups_sync_on_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    from django.apps import apps

    if not apps.is_installed("django.contrib.auth"):
        return
    from django.contrib.auth.models import Group

    # Only once the groups' migration ran (not on a partial migrate before it).
    if not Group.objects.using(using).filter(name__in=list(GROUPS)).exists():
        return
    groups_sync()
