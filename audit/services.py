"""Staff actions and their audit trail.

Every staff action is a service here: it checks the actor's permission (and, for money,
the support adjustment limit), calls the owning app's service, and writes one
``AuditRecord`` (who, what, why, before and after) in the same transaction, so an action
and its record commit or roll back together. Money moves only through ``wallet.services``.
Each money action takes an idempotency key: a retried form submission replays the first
result and writes no second record.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.forms.models import model_to_dict
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiToken, User
from audit.errors import AdjustmentOverLimit, ChargeAlreadyCorrected, StaffActionNotAllowed
from audit.models import AuditRecord
from usage.models import UsageRecord
from wallet import money
from wallet import services as wallet_services
from wallet.errors import IdempotencyKeyRequired, InvalidAmount, ReasonRequired
from wallet.models import CreditLot, LedgerEntry, Wallet

T = TypeVar("T")


def _json(value: Any) -> Any:
    """A JSON-safe copy (datetimes, decimals, UUIDs as strings)."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


# Never copied into the trail: credentials and the hashes that stand for them.
SECRET_FIELDS = frozenset({"password", "secret_hash", "code_hash"})


def snapshot(obj: Any, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """The audit view of a model instance: its editable fields (or ``fields``), without
    secrets."""
    if obj is None:
        return {}
    data = model_to_dict(
        obj, fields=list(fields) if fields is not None else None, exclude=list(SECRET_FIELDS)
    )
    # model_to_dict leaves out non-editable fields; the primary key matters in a trail.
    data.setdefault("id", obj.pk)
    return _json(data)


def audit_record_create(
    *,
    actor: Any,
    action: str,
    target: Any = None,
    target_type: str = "",
    target_id: str = "",
    reason: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    idempotency_key: str = "",
) -> AuditRecord:
    """Append one record. Call it inside the transaction of the action it describes. With
    an ``idempotency_key`` already recorded, returns that record instead (a replay)."""
    if idempotency_key:
        existing = AuditRecord.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
    if target is not None:
        meta = target._meta
        target_type = target_type or f"{meta.app_label}.{meta.model_name}"
        target_id = target_id or str(target.pk)
    return AuditRecord.objects.create(
        actor=actor if getattr(actor, "pk", None) is not None else None,
        actor_label=getattr(actor, "email", "") or "",
        action=action[:64],
        target_type=target_type[:64],
        target_id=str(target_id)[:64],
        target_label=(str(target) if target is not None else "")[:200],
        reason=reason,
        before=_json(before or {}),
        after=_json(after or {}),
        idempotency_key=idempotency_key,
    )


def _require_perm(actor: Any, *perms: str) -> None:
    if actor is None or not getattr(actor, "is_active", False):
        raise StaffActionNotAllowed()
    if not any(actor.has_perm(perm) for perm in perms):
        raise StaffActionNotAllowed(required=list(perms))


def support_adjust_limit_micro() -> int:
    return money.credits_to_micro(settings.SUPPORT_ADJUST_LIMIT_CREDITS, allow_zero=True)


def _require_amount_allowed(actor: Any, amount_micro: int) -> None:
    """Within the support limit: ``adjust_balance``; above it: ``adjust_balance_unlimited``
    (Finance). The limit applies to the size of one movement, up or down."""
    if actor is not None and actor.has_perm("audit.adjust_balance_unlimited"):
        _require_perm(actor, "audit.adjust_balance_unlimited")
        return
    _require_perm(actor, "audit.adjust_balance")
    limit = support_adjust_limit_micro()
    if abs(amount_micro) > limit:
        raise AdjustmentOverLimit(
            limit=money.format_credits(limit), requested=money.format_credits(abs(amount_micro))
        )


def _require_reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise ReasonRequired()
    return reason.strip()


def _require_key(key: str) -> str:
    if not key or not key.strip():
        raise IdempotencyKeyRequired()
    return key.strip()


def _replayed(key: str, build: Callable[[AuditRecord], T]) -> T | None:
    record = AuditRecord.objects.filter(idempotency_key=key).first()
    return build(record) if record is not None else None


def _wallet_view(wallet: Wallet) -> dict[str, Any]:
    fresh = Wallet.objects.get(pk=wallet.pk)
    return {"balance": fresh.balance, "held": fresh.held, "status": fresh.status}


def _entry_for(record: AuditRecord) -> LedgerEntry:
    return LedgerEntry.objects.get(pk=record.after["entry_id"])


# --- Money ----------------------------------------------------------------------------------


def _wallet_move(
    *,
    actor: User,
    wallet: Wallet,
    amount_micro: int,
    reason: str,
    key: str,
    action: str,
    move: Callable[[], LedgerEntry],
    details: dict[str, Any],
) -> LedgerEntry:
    """The frame of a staff movement of credits: the limit, the replay of a key already
    used, and the audit record written in the movement's transaction."""
    _require_amount_allowed(actor, amount_micro)
    # Keys are per action: the same key given to another action is another action.
    key = f"{action}:{key}"
    replay = _replayed(key, _entry_for)
    if replay is not None:
        return replay
    with transaction.atomic():
        before = _wallet_view(wallet)
        entry = move()
        audit_record_create(
            actor=actor,
            action=action,
            target=wallet,
            reason=reason,
            before=before,
            after={**_wallet_view(wallet), "entry_id": entry.pk, "amount": amount_micro, **details},
            idempotency_key=key,
        )
    return entry


def staff_wallet_adjust(
    *,
    actor: User,
    wallet: Wallet,
    amount_micro: int,
    reason: str,
    idempotency_key: str,
    category: str = CreditLot.Category.ADJUSTMENT,
    expires_at: dt.datetime | None = None,
) -> LedgerEntry:
    """Adjust a balance up (a new lot of ``category``) or down (never below zero, never
    into held credits). Support may move up to ``SUPPORT_ADJUST_LIMIT_CREDITS`` at once;
    more needs Finance's ``adjust_balance_unlimited``."""
    reason = _require_reason(reason)
    key = _require_key(idempotency_key)
    if isinstance(amount_micro, bool) or not isinstance(amount_micro, int) or not amount_micro:
        raise InvalidAmount("The adjustment must be a non-zero whole number of micro-credits.")
    return _wallet_move(
        actor=actor,
        wallet=wallet,
        amount_micro=amount_micro,
        reason=reason,
        key=key,
        action="wallet.adjust",
        move=lambda: wallet_services.wallet_adjust(
            wallet=wallet,
            amount=amount_micro,
            reason=reason,
            actor=actor,
            idempotency_key=f"staff-adjust:{key}",
            category=category,
            expires_at=expires_at,
        ),
        details={"category": category, "expires_at": expires_at},
    )


def staff_promotional_grant(
    *,
    actor: User,
    wallet: Wallet,
    amount_micro: int,
    reason: str,
    idempotency_key: str,
    expires_at: dt.datetime | None,
) -> LedgerEntry:
    """Grant promotional credits (optionally expiring). Bound by the same limit as an
    adjustment."""
    reason = _require_reason(reason)
    key = _require_key(idempotency_key)
    amount_micro = money.validate_micro(amount_micro)
    return _wallet_move(
        actor=actor,
        wallet=wallet,
        amount_micro=amount_micro,
        reason=reason,
        key=key,
        action="wallet.promotional_grant",
        move=lambda: wallet_services.wallet_credit(
            wallet=wallet,
            amount=amount_micro,
            category=CreditLot.Category.PROMOTIONAL,
            idempotency_key=f"staff-promo:{key}",
            reference=wallet_services.Ref("staff", str(actor.pk)),
            expires_at=expires_at,
            actor=actor,
            reason=reason,
        ),
        details={"expires_at": expires_at},
    )


def _usage_entry(record: UsageRecord) -> LedgerEntry | None:
    return (
        LedgerEntry.objects.filter(
            reference_type="usage.usagerecord",
            reference_id=str(record.pk),
            kind=LedgerEntry.Kind.USAGE,
            corrects__isnull=True,
        )
        .order_by("id")
        .first()
    )


def usage_record_charged_net(*, record: UsageRecord) -> int:
    """What the wallet paid for a record after corrections (µcr, positive)."""
    total = sum(
        LedgerEntry.objects.filter(
            reference_type="usage.usagerecord", reference_id=str(record.pk)
        ).values_list("amount", flat=True)
    )
    return -total


def staff_usage_charge_correct(
    *,
    actor: User,
    record: UsageRecord,
    new_charge_micro: int | None,
    reason: str,
    idempotency_key: str,
) -> list[LedgerEntry]:
    """A billing correction: a reversal entry giving back what the record charged (as an
    adjustment lot), plus, if given, a new usage charge of ``new_charge_micro``; both point
    at the original entry (``corrects``). All or nothing: if the new charge cannot be
    covered, nothing changes (``InsufficientCredits``). A record is corrected once."""
    reason = _require_reason(reason)
    key = _require_key(idempotency_key)
    _require_perm(actor, "audit.correct_charge")
    if new_charge_micro is not None:
        new_charge_micro = money.validate_micro(new_charge_micro, allow_zero=True)
    _require_amount_allowed(actor, max(record.charged_micro, new_charge_micro or 0))
    audit_key = f"usage.charge_correct:{key}"
    replay = _replayed(
        audit_key,
        lambda audit: list(
            LedgerEntry.objects.filter(pk__in=audit.after["entry_ids"]).order_by("id")
        ),
    )
    if replay is not None:
        return replay
    with transaction.atomic():
        # The record's row lock serializes corrections of one record (lock order: record,
        # token, then the wallet inside wallet.services).
        locked = UsageRecord.objects.select_for_update().get(pk=record.pk)
        original = _usage_entry(locked)
        if AuditRecord.objects.filter(
            action="usage.charge_correct",
            target_type="usage.usagerecord",
            target_id=str(locked.pk),
        ).exists():
            raise ChargeAlreadyCorrected(usage_record_id=locked.pk)
        wallet = Wallet.objects.get(pk=locked.wallet_id)
        before = {**_wallet_view(wallet), "charged": usage_record_charged_net(record=locked)}
        reference = wallet_services.Ref.to(locked)
        if locked.token_id is not None:
            # The token's lifetime usage (its quota) follows the corrected charge. Locked
            # before the wallet: the global lock order is token, membership, hold, wallet.
            reversed_micro = -original.amount if original is not None else 0
            delta = (new_charge_micro or 0) - reversed_micro
            account_services.api_token_spend_add(
                token_id=locked.token_id,
                amount=delta,
                # Like any charge, a correction counts in the budget period it is made in.
                now=timezone.now(),
            )
            # A pool member's monthly spend follows too, in the month of the request.
            membership_id = (
                ApiToken.objects.filter(pk=locked.token_id)
                .values_list("membership_id", flat=True)
                .first()
            )
            if membership_id is not None:
                account_services.membership_spend_correct(
                    membership_id=membership_id, amount=delta, month_of=locked.finished_at
                )
        entries: list[LedgerEntry] = []
        if original is not None and original.amount < 0:
            entries.append(
                wallet_services.wallet_credit(
                    wallet=wallet,
                    amount=-original.amount,
                    category=CreditLot.Category.ADJUSTMENT,
                    kind=LedgerEntry.Kind.REVERSAL,
                    idempotency_key=f"usage-correction:{key}:reversal",
                    reference=reference,
                    actor=actor,
                    reason=reason,
                    corrects=original,
                )
            )
        if new_charge_micro:
            charge = wallet_services.wallet_debit(
                wallet=wallet,
                amount=new_charge_micro,
                idempotency_key=f"usage-correction:{key}:charge",
                reference=reference,
                kind=LedgerEntry.Kind.USAGE,
                actor=actor,
                reason=reason,
                corrects=original,
            )
            assert charge.entry_id is not None
            entries.append(LedgerEntry.objects.get(pk=charge.entry_id))
        if not entries:
            raise InvalidAmount("Nothing to correct: the record charged nothing.")
        audit_record_create(
            actor=actor,
            action="usage.charge_correct",
            target=locked,
            reason=reason,
            before=before,
            after={
                **_wallet_view(wallet),
                "charged": usage_record_charged_net(record=locked),
                "entry_ids": [e.pk for e in entries],
            },
            idempotency_key=audit_key,
        )
    return entries


# --- Accounts -------------------------------------------------------------------------------


def staff_user_disable(*, actor: User, user: User, reason: str) -> User:
    """Disable an account: it can no longer log in, and its API tokens stop working (token
    authentication refuses inactive users). Credits are untouched."""
    reason = _require_reason(reason)
    _require_perm(actor, "audit.disable_account")
    with transaction.atomic():
        before = {"is_active": User.objects.get(pk=user.pk).is_active}
        account_services.user_set_active(user=user, is_active=False)
        audit_record_create(
            actor=actor,
            action="user.disable",
            target=user,
            reason=reason,
            before=before,
            after={"is_active": False},
        )
    return user


def staff_user_tokens_revoke(*, actor: User, user: User, reason: str) -> int:
    """Revoke every active API token of the user. Returns how many were revoked."""
    reason = _require_reason(reason)
    _require_perm(actor, "audit.revoke_tokens")
    with transaction.atomic():
        active = list(
            ApiToken.objects.select_for_update()
            .filter(user=user, status=ApiToken.Status.ACTIVE)
            .order_by("id")
        )
        now = timezone.now()
        for token in active:
            account_services.api_token_revoke(token=token, now=now)
        audit_record_create(
            actor=actor,
            action="user.tokens_revoke",
            target=user,
            reason=reason,
            before={"active_tokens": [t.prefix for t in active]},
            after={"active_tokens": [], "revoked": len(active)},
        )
    return len(active)
