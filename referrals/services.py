"""Writes of the referrals app: invite codes, referrals at sign-up, rewards on paid top-ups,
their reversal on refunds, and transfers of the reward balance to the wallet.

Guarantees kept here:

* Only this module changes a reward balance, always through ``_post``: the account row is
  locked, one append-only entry with a UNIQUE idempotency key is written, and balance,
  debt and total earned move in the same transaction (``referrals.models`` invariants).
  A debt (a reversed reward that could not be recovered) is paid off by the next credit.
* A reward is paid only on a completed top-up of an invited account, at most once per
  order (and once per referral for the first-top-up rules), keyed by referral and order;
  never for a sign-up alone. Top-ups are read through ``billing.selectors`` only.
* A refund reverses the reward in proportion to the money refunded, cumulatively and
  idempotently (keyed by the reward and the refunded total): first from the reward
  balance, then from the referral credits already transferred to the wallet
  (``lots_reverse``, never below zero), and what neither covers becomes debt.
* A transfer moves reward balance into a ``referral`` wallet lot (``wallet_credit``) and
  writes its entry in the same transaction, once per idempotency key.

Lock order: referral account -> wallet -> lots.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from billing import selectors as billing_selectors
from billing.models import TopUpOrder
from config import crockford
from config.errors import IdempotencyConflict
from referrals.errors import (
    AlreadyReferred,
    InsufficientRewardBalance,
    InviteCodeNotFound,
    ReferralWindowClosed,
    SelfReferral,
    TransferBelowMinimum,
)
from referrals.models import Referral, ReferralAccount, ReferralLedgerEntry, RewardRule
from wallet import money
from wallet import selectors as wallet_selectors
from wallet import services as wallet_services
from wallet.errors import IdempotencyKeyRequired, LotNotReversible
from wallet.models import CreditLot, LedgerEntry

Kind = ReferralLedgerEntry.Kind
Basis = RewardRule.Basis

INVITE_CODE_LENGTH = 8  # 40 bits: short enough to read out, far too many to enumerate
ORDER_REFERENCE = "billing.topuporder"
REFUND_REFERENCE = "billing.refund"
ACCOUNT_REFERENCE = "referrals.referralaccount"
WALLET_ENTRY_REFERENCE = "wallet.ledgerentry"
# A referral is recorded by the sign-up itself; this only bounds how late that may happen.
SIGNUP_GRACE = dt.timedelta(hours=1)
_REWARDABLE = (TopUpOrder.Status.COMPLETED, TopUpOrder.Status.PARTIALLY_REFUNDED)


@dataclass(frozen=True)
class TransferResult:
    entry: ReferralLedgerEntry
    wallet_entry: LedgerEntry
    replayed: bool = False


# --- Accounts and invite codes ------------------------------------------------------------------


def invite_code_normalize(text: str) -> str | None:
    code = crockford.normalize(text)
    return code if crockford.is_valid(code, INVITE_CODE_LENGTH) else None


def referral_account_get_or_create(*, user: Any) -> ReferralAccount:
    """The user's reward account with a new random invite code, created on first use."""
    existing = ReferralAccount.objects.filter(user=user).first()
    if existing is not None:
        return existing
    for _ in range(5):
        try:
            with transaction.atomic():
                return ReferralAccount.objects.create(
                    user=user, code=crockford.random_string(INVITE_CODE_LENGTH)
                )
        except IntegrityError:  # created concurrently, or (rarely) the code was taken
            existing = ReferralAccount.objects.filter(user=user).first()
            if existing is not None:
                return existing
    raise RuntimeError("Could not find a free invite code.")


def _lock_account(account_id: int) -> ReferralAccount:
    return ReferralAccount.objects.select_for_update().get(pk=account_id)


def _post(
    account: ReferralAccount,
    *,
    kind: str,
    amount: int,
    key: str,
    reference: tuple[str, object],
    **fields: Any,
) -> ReferralLedgerEntry:
    """Append one entry to a locked account and move its balance, debt and total earned.
    The running position ``balance - debt`` changes by ``amount``; a debt is paid first."""
    position = account.balance - account.debt + amount
    balance, debt = max(position, 0), max(-position, 0)
    entry = ReferralLedgerEntry.objects.create(
        account=account,
        kind=kind,
        amount=amount,
        balance_after=balance,
        debt_after=debt,
        reference_type=reference[0],
        reference_id=str(reference[1] or ""),
        idempotency_key=key,
        **fields,
    )
    earned = amount if kind in (Kind.REWARD, Kind.REVERSAL) else 0
    ReferralAccount.objects.filter(pk=account.pk).update(
        balance=balance, debt=debt, total_earned=F("total_earned") + earned
    )
    account.balance, account.debt = balance, debt
    account.total_earned += earned
    return entry


# --- Referrals at sign-up -----------------------------------------------------------------------


def referral_record_signup(
    *, invitee: Any, invite_code: str, now: dt.datetime | None = None
) -> Referral:
    """Record that ``invitee`` signed up through ``invite_code``, and grant the invitee the
    active rule's sign-up credits (a promotional lot) if it has any. The inviter earns
    nothing here: rewards come only from paid top-ups.

    Refused: an unknown code (``invite_code_not_found``), the invitee's own code
    (``self_referral``), an account already invited (``already_referred``, also under a
    race: the invitee is UNIQUE), or an account that signed up earlier
    (``referral_window_closed``)."""
    now = now or timezone.now()
    code = invite_code_normalize(invite_code)
    account = (
        ReferralAccount.objects.select_related("user").filter(code=code).first() if code else None
    )
    if account is None or not account.user.is_active:
        raise InviteCodeNotFound()
    if account.user_id == invitee.pk:
        raise SelfReferral()
    if Referral.objects.filter(invitee=invitee).exists():
        raise AlreadyReferred()
    if now - invitee.date_joined > SIGNUP_GRACE:
        raise ReferralWindowClosed()
    rule = RewardRule.objects.filter(is_active=True).first()
    signup_micro = rule.signup_credits_micro if rule is not None else 0
    try:
        with transaction.atomic():
            referral = Referral.objects.create(
                inviter_id=account.user_id,
                invitee=invitee,
                invite_code=account.code,
                rule=rule,
                signup_credits_micro=signup_micro,
                created_at=now,
            )
            if rule is not None and signup_micro:
                expires_at = (
                    now + dt.timedelta(days=rule.signup_credits_days)
                    if rule.signup_credits_days
                    else None
                )
                wallet_services.wallet_credit(
                    wallet=wallet_selectors.wallet_get_for_user(user=invitee),
                    amount=signup_micro,
                    category=CreditLot.Category.PROMOTIONAL,
                    idempotency_key=f"referral-signup:{referral.pk}",
                    reference=wallet_services.Ref.to(referral),
                    expires_at=expires_at,
                    reason="Welcome credits for joining through an invitation",
                    now=now,
                )
    except IntegrityError as exc:
        raise AlreadyReferred() from exc
    return referral


# --- Rewards ------------------------------------------------------------------------------------


def _reward_terms(
    *, rule: RewardRule, referral: Referral, order: TopUpOrder
) -> tuple[int, str] | None:
    """(amount, idempotency key) the order earns under ``rule``, or None."""
    if rule.basis in (Basis.PERCENT_FIRST, Basis.FIXED_FIRST):
        first = billing_selectors.topup_order_first_completed(user=order.user_id)
        if first is None or first.pk != order.pk:
            return None
        key = f"referral-reward:{referral.pk}:first"
    else:
        assert rule.window_days is not None and order.completed_at is not None
        if order.completed_at > referral.created_at + dt.timedelta(days=rule.window_days):
            return None
        key = f"referral-reward:{referral.pk}:order:{order.pk}"
    if rule.basis == Basis.FIXED_FIRST:
        amount = int(rule.fixed_micro or 0)
    else:
        assert rule.percent is not None
        amount = money.round_micro(Decimal(order.base_micro) * rule.percent / 100)
    return (amount, key) if amount > 0 else None


def referral_reward_for_order(*, order_id: int) -> ReferralLedgerEntry | None:
    """Pay the inviter's reward for a completed top-up of an invited account, under the
    reward rule active now. Idempotent (run by the top-up's follow-up task, which may run
    twice or concurrently); returns the reward entry, or None when the order earns none.
    A top-up already partly refunded has its reward reduced at once."""
    order = billing_selectors.topup_order_get_by_id(order_id=order_id)
    if order is None or order.status not in _REWARDABLE or order.paid_lot_id is None:
        return None
    referral = Referral.objects.select_related("inviter").filter(invitee_id=order.user_id).first()
    rule = RewardRule.objects.filter(is_active=True).first()
    if referral is None or rule is None:
        return None
    terms = _reward_terms(rule=rule, referral=referral, order=order)
    if terms is None:
        return None
    amount, key = terms
    account = referral_account_get_or_create(user=referral.inviter)
    with transaction.atomic():
        locked = _lock_account(account.pk)
        entry = ReferralLedgerEntry.objects.filter(
            Q(idempotency_key=key)
            | Q(kind=Kind.REWARD, reference_type=ORDER_REFERENCE, reference_id=str(order.pk))
        ).first()
        if entry is None:
            entry = _post(
                locked,
                kind=Kind.REWARD,
                amount=amount,
                key=key,
                reference=(ORDER_REFERENCE, order.pk),
                referral=referral,
                rule=rule,
                note=f"Top-up {order.order_no} by an invited account ({rule.name})",
            )
    if order.refunded_amount_minor and entry.reference_id == str(order.pk):
        _reversal_sync(reward=entry, order=order, refund_id=None)
    return entry


# --- Reversals ----------------------------------------------------------------------------------


def referral_reversal_for_refund(
    *, order_id: int, refund_id: int | None = None
) -> list[ReferralLedgerEntry]:
    """Reverse the rewards paid on a top-up as far as its money was refunded. Idempotent:
    the reversal is computed from the order's refunded total, so running it twice, for
    refunds in any order, or for a refund already covered, reverses nothing more."""
    order = billing_selectors.topup_order_get_by_id(order_id=order_id)
    if order is None:
        return []
    rewards = ReferralLedgerEntry.objects.filter(
        kind=Kind.REWARD, reference_type=ORDER_REFERENCE, reference_id=str(order.pk)
    ).order_by("id")
    entries: list[ReferralLedgerEntry] = []
    for reward in rewards:
        entries += _reversal_sync(reward=reward, order=order, refund_id=refund_id)
    return entries


def _reversal_sync(
    *, reward: ReferralLedgerEntry, order: TopUpOrder, refund_id: int | None
) -> list[ReferralLedgerEntry]:
    refunded = min(order.refunded_amount_minor, order.amount_minor)
    if refunded <= 0:
        return []
    if refunded == order.amount_minor:
        target = reward.amount
    else:
        target = min(
            reward.amount,
            money.round_micro(Decimal(reward.amount) * refunded / order.amount_minor),
        )
    key = f"referral-reversal:{reward.pk}:{refunded}"
    reference = (REFUND_REFERENCE, refund_id) if refund_id else (ORDER_REFERENCE, order.pk)
    with transaction.atomic():
        account = _lock_account(reward.account_id)
        reversed_so_far = -int(
            ReferralLedgerEntry.objects.filter(reverses=reward, kind=Kind.REVERSAL).aggregate(
                total=Sum("amount")
            )["total"]
            or 0
        )
        amount = target - reversed_so_far
        if amount <= 0:
            return []
        debt_before = account.debt
        reversal = _post(
            account,
            kind=Kind.REVERSAL,
            amount=-amount,
            key=key,
            reference=reference,
            referral_id=reward.referral_id,
            reverses=reward,
            note=f"Top-up {order.order_no} was refunded ({refunded} of {order.amount_minor} "
            f"{order.currency.upper()} minor units)",
        )
        entries = [reversal]
        uncovered = reversal.debt_after - debt_before
        if uncovered > 0:
            recovered, wallet_entry = _recover_from_wallet(
                user_id=account.user_id, amount=uncovered, key=f"{key}:wallet", reward=reward
            )
            if recovered:
                entries.append(
                    _post(
                        account,
                        kind=Kind.RECOVERY,
                        amount=recovered,
                        key=f"{key}:recovered",
                        reference=(WALLET_ENTRY_REFERENCE, wallet_entry.pk if wallet_entry else ""),
                        referral_id=reward.referral_id,
                        reverses=reward,
                        wallet_entry=wallet_entry,
                        note="Taken back from referral credits already moved to the wallet",
                    )
                )
    return entries


def _recover_from_wallet(
    *, user_id: int, amount: int, key: str, reward: ReferralLedgerEntry
) -> tuple[int, LedgerEntry | None]:
    """Take up to ``amount`` back from the referral lots this program put in the user's
    wallet, as far as they still hold credits that are not reserved (never below zero).
    Returns what was taken and the first wallet entry."""
    for _ in range(3):
        wallet = wallet_selectors.wallet_get_for_user(user=user_id)
        lots = [
            lot
            for lot in wallet_selectors.lot_list(wallet=wallet)
            if lot.category == CreditLot.Category.REFERRAL
            and lot.reference_type == ACCOUNT_REFERENCE
        ]
        wanted = min(amount, max(wallet.balance - wallet.held, 0))
        takes: dict[int, int] = {}
        for lot in lots:
            take = min(lot.remaining, wanted - sum(takes.values()))
            if take > 0:
                takes[lot.pk] = take
        if not takes:
            return 0, None
        try:
            entries = wallet_services.lots_reverse(
                lots=[lot for lot in lots if lot.pk in takes],
                amounts=takes,
                idempotency_key=key,
                reference=wallet_services.Ref("referrals.referralledgerentry", str(reward.pk)),
                kind=LedgerEntry.Kind.REVERSAL,
                reason="Invite reward reversed: the invitee's top-up was refunded.",
            )
        except LotNotReversible:  # spent or reserved meanwhile: look again
            continue
        return sum(-entry.amount for entry in entries), (entries[0] if entries else None)
    return 0, None


# --- Transfers ----------------------------------------------------------------------------------


def minimum_transfer_micro() -> int:
    return money.credits_to_micro(settings.REFERRAL_MIN_TRANSFER, allow_zero=True)


def reward_transfer(
    *, user: Any, idempotency_key: str, amount_micro: int | None = None
) -> TransferResult:
    """Move ``amount_micro`` (default: the whole balance) of the user's reward balance into
    their wallet as a ``referral`` lot. Both ledgers change in one transaction, once per
    idempotency key: a retry returns the first transfer (``replayed``); the key with another
    amount is an ``idempotency_conflict``.

    Refused with nothing changed: no key (``idempotency_key_required``), less than
    REFERRAL_MIN_TRANSFER (``transfer_below_minimum``), more than the balance
    (``insufficient_reward_balance``)."""
    client_key = (idempotency_key or "").strip()
    if not client_key:
        raise IdempotencyKeyRequired()
    if len(client_key) > 120:
        raise IdempotencyKeyRequired("The idempotency key is longer than 120 characters.")
    if amount_micro is not None:
        amount_micro = money.validate_micro(amount_micro)
    account = referral_account_get_or_create(user=user)
    key = f"referral-transfer:{account.pk}:{client_key}"
    minimum = minimum_transfer_micro()
    with transaction.atomic():
        locked = _lock_account(account.pk)
        earlier = (
            ReferralLedgerEntry.objects.select_related("wallet_entry")
            .filter(idempotency_key=key)
            .first()
        )
        if earlier is not None:
            if amount_micro is not None and -earlier.amount != amount_micro:
                raise IdempotencyConflict(idempotency_key=client_key)
            assert earlier.wallet_entry is not None
            return TransferResult(earlier, earlier.wallet_entry, replayed=True)
        amount = locked.balance if amount_micro is None else amount_micro
        if amount <= 0 or amount < minimum:
            raise TransferBelowMinimum(
                f"The smallest transfer is {money.format_credits(minimum)} credits.",
                minimum_micro=minimum,
                requested_micro=amount,
                balance_micro=locked.balance,
            )
        if amount > locked.balance:
            raise InsufficientRewardBalance(
                requested_micro=amount, balance_micro=locked.balance, debt_micro=locked.debt
            )
        wallet_entry = wallet_services.wallet_credit(
            wallet=wallet_selectors.wallet_get_for_user(user=user),
            amount=amount,
            category=CreditLot.Category.REFERRAL,
            idempotency_key=key,
            reference=wallet_services.Ref(ACCOUNT_REFERENCE, str(account.pk)),
            reason="Invite rewards moved to the wallet",
        )
        entry = _post(
            locked,
            kind=Kind.TRANSFER,
            amount=-amount,
            key=key,
            reference=(WALLET_ENTRY_REFERENCE, wallet_entry.pk),
            wallet_entry=wallet_entry,
            note="Moved to the wallet",
        )
        return TransferResult(entry, wallet_entry)


# --- Reward rules -------------------------------------------------------------------------------


@transaction.atomic
def reward_rule_activate(*, rule: RewardRule | None) -> None:
    """Make ``rule`` the one active rule (None: no rule, so no new rewards or sign-up
    credits). The UNIQUE partial index keeps it to one even under concurrent edits."""
    others = RewardRule.objects.select_for_update().filter(is_active=True)
    if rule is not None:
        others = others.exclude(pk=rule.pk)
    others.update(is_active=False)
    if rule is not None:
        RewardRule.objects.filter(pk=rule.pk).update(is_active=True)
        rule.is_active = True


def referral_rewards_reconcile(*, since: dt.datetime) -> int:
    """Pay any reward and apply any reversal that the top-up follow-up task missed (a broker
    outage when it was enqueued, or retries exhausted), for invitees' top-ups completed
    since ``since``. Both steps are idempotent, so this is safe to run at any time and as
    often as wanted. Returns the number of orders looked at."""
    order_ids = billing_selectors.topup_order_ids_settled_since(
        since=since, user_ids=Referral.objects.values("invitee_id")
    )
    for order_id in order_ids:
        referral_reward_for_order(order_id=order_id)
        referral_reversal_for_refund(order_id=order_id)
    return len(order_ids)
