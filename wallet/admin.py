"""The ledger is read-only in the admin: every change goes through ``wallet.services``."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from wallet.models import CreditLot, Hold, LedgerEntry, Wallet


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Wallet)
class WalletAdmin(ReadOnlyAdmin):
    list_display = ("id", "owner_label", "balance", "held", "status", "created_at")
    list_filter = ("status",)
    search_fields = ("user__email", "organization__name", "organization__slug")


@admin.register(CreditLot)
class CreditLotAdmin(ReadOnlyAdmin):
    list_display = ("id", "wallet", "category", "amount", "remaining", "expires_at", "created_at")
    list_filter = ("category",)
    search_fields = ("wallet__user__email", "reference_id")


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "wallet",
        "kind",
        "amount",
        "balance_after",
        "reference_type",
        "reference_id",
        "actor",
        "created_at",
    )
    list_filter = ("kind",)
    search_fields = ("wallet__user__email", "reference_id", "idempotency_key")


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "wallet",
        "request_id",
        "amount",
        "status",
        "captured_amount",
        "shortfall",
        "expires_at",
    )
    list_filter = ("status",)
    search_fields = ("request_id",)
