"""Writes of the redemption app: generating batches, disabling them, redeeming codes.

Guarantees kept here:

* A code's plaintext leaves this module once, in the return value of ``batch_generate``;
  the database holds only its keyed hash (``redemption.codes``).
* A redemption locks the code row, so a code allowing N uses is redeemed exactly N times
  however many people try at once (and the CHECK ``uses <= max_uses`` backs it up).
* One account redeems at most ``uses_per_account`` codes of a batch: each redemption takes
  the next sequence number under a UNIQUE (batch, user, sequence) constraint, and its
  credits are written by ``wallet_credit`` under the matching idempotency key
  ``redemption:<batch>:<user>:<sequence>`` in the same transaction.
* A refusal raises one of the ``redemption.errors`` and changes nothing; failed attempts are
  counted per user and per client address and refused with ``rate_limited`` beyond
  ``REDEMPTION_FAILURE_LIMIT`` per window (successful redemptions are not counted).

Lock order: code -> wallet -> lots.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from billing import selectors as billing_selectors
from config.errors import IdempotencyConflict, RateLimited, ValidationFailed
from config.ratelimit import Window
from redemption import codes
from redemption.errors import (
    AlreadyRedeemed,
    CodeDisabled,
    CodeExhausted,
    CodeExpired,
    CodeNotFound,
    NotEligible,
    RedemptionError,
)
from redemption.models import Redemption, RedemptionBatch, RedemptionCode
from wallet import money
from wallet import selectors as wallet_selectors
from wallet import services as wallet_services
from wallet.errors import IdempotencyKeyRequired
from wallet.models import CreditLot

_INSERT_CHUNK = 1000
_Switchable = TypeVar("_Switchable", RedemptionBatch, RedemptionCode)


@dataclass(frozen=True)
class GeneratedBatch:
    """A new batch and its codes in plain text (grouped), in the order they were stored.
    This is the only time the plaintext exists: hand it out, then let it go."""

    batch: RedemptionBatch
    codes: list[str]


@dataclass(frozen=True)
class RedeemResult:
    redemption: Redemption
    replayed: bool = False


# --- Batches ----------------------------------------------------------------------------------


def _optional_days(value: object, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationFailed(f"The {field} must be a whole number of days.", field=field)
    return value


def _positive(value: object, field: str, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationFailed(f"The {field} must be a whole number of at least 1.", field=field)
    if maximum is not None and value > maximum:
        raise ValidationFailed(
            f"The {field} can be at most {maximum}.", field=field, maximum=maximum
        )
    return value


def countries_clean(countries: str | Iterable[str]) -> str:
    """``"us, de"`` or ``["US", "DE"]`` -> ``"DE,US"``; refuses anything but ISO alpha-2."""
    parts = countries.split(",") if isinstance(countries, str) else list(countries)
    cleaned = sorted({p.strip().upper() for p in parts if p and p.strip()})
    bad = [c for c in cleaned if len(c) != 2 or not c.isalpha() or not c.isascii()]
    if bad:
        raise ValidationFailed(
            "Countries must be two-letter ISO codes such as US or DE.",
            field="allowed_countries",
            invalid=bad,
        )
    return ",".join(cleaned)


def batch_generate(
    *,
    name: str,
    credits_micro: int,
    code_count: int,
    uses_per_code: int = 1,
    uses_per_account: int = 1,
    codes_expire_at: dt.datetime | None = None,
    credit_validity_days: int | None = None,
    credits_expire_at: dt.datetime | None = None,
    new_accounts_within_days: int | None = None,
    min_account_age_days: int | None = None,
    allowed_countries: str | Iterable[str] = "",
    require_no_prior_topup: bool = False,
    allowed_users: Sequence[Any] = (),
    actor: Any = None,
    choice: Callable[[Sequence[str]], str] = secrets.choice,
    now: dt.datetime | None = None,
) -> GeneratedBatch:
    """Create a batch and ``code_count`` new codes (at most REDEMPTION_MAX_CODES_PER_BATCH)
    in one transaction, and return the codes in plain text — the only time they exist.

    ``choice`` picks each character (``secrets.choice``; the demo passes a seeded one so its
    printed codes stay the same from run to run)."""
    now = now or timezone.now()
    name = (name or "").strip()
    if not name:
        raise ValidationFailed("The batch needs a name.", field="name")
    credits_micro = money.validate_micro(credits_micro, field="credits")
    code_count = _positive(code_count, "number of codes", settings.REDEMPTION_MAX_CODES_PER_BATCH)
    uses_per_code = _positive(uses_per_code, "uses per code")
    uses_per_account = _positive(uses_per_account, "uses per account")
    for field, moment in (("code expiry", codes_expire_at), ("credit expiry", credits_expire_at)):
        if moment is not None and moment <= now:
            raise ValidationFailed(f"The {field} must be in the future.", field=field)
    batch = RedemptionBatch(
        name=name[:120],
        credits_micro=credits_micro,
        code_count=code_count,
        uses_per_code=uses_per_code,
        uses_per_account=uses_per_account,
        codes_expire_at=codes_expire_at,
        credit_validity_days=_optional_days(credit_validity_days, "credit validity"),
        credits_expire_at=credits_expire_at,
        new_accounts_within_days=_optional_days(new_accounts_within_days, "new account period"),
        min_account_age_days=_optional_days(min_account_age_days, "minimum account age"),
        allowed_countries=countries_clean(allowed_countries),
        require_no_prior_topup=bool(require_no_prior_topup),
        created_by=actor if getattr(actor, "pk", None) else None,
        created_at=now,
    )
    for _ in range(3):
        plain = [codes.code_generate(choice) for _ in range(code_count)]
        if len(set(plain)) != len(plain):  # 80 bits: never in practice, but never twice
            continue
        try:
            with transaction.atomic():
                batch.pk = None
                batch.save()
                if allowed_users:
                    batch.allowed_users.set(allowed_users)
                RedemptionCode.objects.bulk_create(
                    [
                        RedemptionCode(
                            batch=batch,
                            code_hash=codes.code_hash(code),
                            hint=codes.code_hint(code),
                            max_uses=uses_per_code,
                            created_at=now,
                        )
                        for code in plain
                    ],
                    batch_size=_INSERT_CHUNK,
                )
        except IntegrityError:  # a hash already stored (as above: astronomically unlikely)
            continue
        return GeneratedBatch(batch, [codes.code_display(code) for code in plain])
    raise RuntimeError("Could not generate unique codes; check the random source.")


def _status_set(obj: _Switchable, status: str) -> _Switchable:
    model = type(obj)
    if status not in model.Status.values:
        raise ValidationFailed("Unknown status.", status=status)
    disabled_at = timezone.now() if status == model.Status.DISABLED else None
    model.objects.filter(pk=obj.pk).update(status=status, disabled_at=disabled_at)
    obj.status, obj.disabled_at = status, disabled_at
    return obj


def batch_set_status(*, batch: RedemptionBatch, status: str) -> RedemptionBatch:
    """Disable (or re-enable) every code of a batch at once. Redemptions already made stand."""
    return _status_set(batch, status)


def code_set_status(*, code: RedemptionCode, status: str) -> RedemptionCode:
    """Disable (or re-enable) one code, e.g. one that was leaked or printed by mistake."""
    return _status_set(code, status)


def code_find(*, text: str) -> RedemptionCode | None:
    """The stored code matching typed input (for support staff), or None."""
    canonical = codes.code_normalize(text)
    if canonical is None:
        return None
    return (
        RedemptionCode.objects.select_related("batch")
        .filter(code_hash__in=codes.code_hash_candidates(canonical))
        .first()
    )


# --- Eligibility ------------------------------------------------------------------------------


def eligibility_check(*, batch: RedemptionBatch, user: Any, now: dt.datetime) -> None:
    """Raise ``NotEligible`` naming the first rule of the batch the account does not meet."""
    age = now - user.date_joined
    days = batch.new_accounts_within_days
    if days is not None and age > dt.timedelta(days=days):
        raise NotEligible(
            f"This code is only for new accounts (created in the last {days} days).",
            rule="new_accounts_only",
            days=days,
        )
    days = batch.min_account_age_days
    if days and age < dt.timedelta(days=days):
        raise NotEligible(
            f"This code is only for accounts at least {days} days old.",
            rule="minimum_account_age",
            days=days,
        )
    countries = batch.country_list
    if countries and (user.country or "").upper() not in countries:
        raise NotEligible(
            "This code is only for accounts registered in "
            f"{', '.join(countries)}; yours is {user.country or 'not set'}.",
            rule="country",
            countries=countries,
        )
    if batch.require_no_prior_topup and billing_selectors.user_has_completed_topup(user=user):
        raise NotEligible(
            "This code is only for accounts that have not topped up yet.",
            rule="no_prior_topup",
        )
    listed = batch.allowed_users.all()
    if listed.exists() and not listed.filter(pk=user.pk).exists():
        raise NotEligible(
            "This code is reserved for specific accounts, and yours is not one of them.",
            rule="listed_accounts",
        )


# --- Redeeming --------------------------------------------------------------------------------


def failure_window() -> Window:
    return Window(
        "redeem-failure",
        limit=settings.REDEMPTION_FAILURE_LIMIT,
        seconds=settings.REDEMPTION_FAILURE_WINDOW_SECONDS,
    )


def _clean_key(key: str | None) -> str:
    key = (key or "").strip()
    if len(key) > 200:
        raise IdempotencyKeyRequired("The idempotency key is longer than 200 characters.")
    return key


def _replay(*, user: Any, client_key: str, hashes: list[str]) -> RedeemResult | None:
    if not client_key:
        return None
    earlier = (
        Redemption.objects.select_related("code", "batch", "lot")
        .filter(user=user, client_key=client_key)
        .first()
    )
    if earlier is None:
        return None
    if earlier.code.code_hash not in hashes:
        raise IdempotencyConflict(idempotency_key=client_key)
    return RedeemResult(earlier, replayed=True)


def code_redeem(
    *,
    user: Any,
    code: str,
    ip_address: str = "",
    client_key: str = "",
    now: dt.datetime | None = None,
) -> RedeemResult:
    """Redeem ``code`` (as typed) for ``user``: its batch's credits land in the user's
    wallet as a ``redemption`` lot expiring as the batch says.

    Refusals, in this order of precedence: ``code_not_found``, ``code_disabled``,
    ``code_expired``, ``already_redeemed`` (this account used its share of the batch),
    ``code_exhausted``, ``not_eligible`` (with ``detail.rule``). Each changes nothing and
    counts as a failed attempt for the user and for ``ip_address``; past the limit the
    answer is ``rate_limited`` (with ``retry_after``) whatever the code.

    With ``client_key`` a retry returns the first redemption (``replayed``) instead of
    ``already_redeemed``; the same key with another code is an ``idempotency_conflict``."""
    now = now or timezone.now()
    client_key = _clean_key(client_key)
    canonical = codes.code_normalize(code)
    hashes = codes.code_hash_candidates(canonical) if canonical else []
    replay = _replay(user=user, client_key=client_key, hashes=hashes)
    if replay is not None:
        return replay
    window = failure_window()
    subjects = [f"user:{user.pk}"] + ([f"ip:{ip_address}"] if ip_address else [])
    # Count the attempt before trying it, so parallel guesses cannot all pass the check;
    # an attempt that does not fail for a guesser's reason is given back below.
    counts = [window.hit(subject) for subject in subjects]
    over = [
        subject for subject, count in zip(subjects, counts, strict=True) if count > window.limit
    ]
    if over:
        # Refused unseen, so not an attempt: it must not push a shared address further.
        for subject in subjects:
            window.unhit(subject)
        raise RateLimited(
            "Too many failed attempts to redeem a code. Try again later.",
            retry_after=window.retry_after(over[0]),
        )
    counted = False
    try:
        return _redeem(
            user=user,
            hashes=hashes,
            ip_address=_valid_ip(ip_address),
            client_key=client_key,
            now=now,
        )
    except RedemptionError:
        counted = True
        raise
    finally:
        if not counted:
            for subject in subjects:
                window.unhit(subject)


def _valid_ip(ip_address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip_address))
    except ValueError:
        return None


def _redeem(
    *, user: Any, hashes: list[str], ip_address: str | None, client_key: str, now: dt.datetime
) -> RedeemResult:
    code_id = (
        RedemptionCode.objects.filter(code_hash__in=hashes).values_list("pk", flat=True).first()
        if hashes
        else None
    )
    if code_id is None:
        raise CodeNotFound()
    wallet = wallet_selectors.wallet_get_for_user(user=user)
    for _ in range(3):
        try:
            with transaction.atomic():
                return _redeem_locked(
                    code_id=code_id,
                    user=user,
                    wallet_id=wallet.pk,
                    ip_address=ip_address,
                    client_key=client_key,
                    hashes=hashes,
                    now=now,
                )
        except IntegrityError:
            # Another redemption by this account committed first: the same client key, or
            # another code of the batch taking the same sequence number. Look again.
            replay = _replay(user=user, client_key=client_key, hashes=hashes)
            if replay is not None:
                return replay
    raise AlreadyRedeemed()


def _redeem_locked(
    *,
    code_id: int,
    user: Any,
    wallet_id: int,
    ip_address: str | None,
    client_key: str,
    hashes: list[str],
    now: dt.datetime,
) -> RedeemResult:
    code = RedemptionCode.objects.select_for_update().get(pk=code_id)
    # A retry that waited for the lock behind its own first attempt replays it.
    replay = _replay(user=user, client_key=client_key, hashes=hashes)
    if replay is not None:
        return replay
    batch = RedemptionBatch.objects.get(pk=code.batch_id)
    if batch.status != RedemptionBatch.Status.ACTIVE or code.status != RedemptionCode.Status.ACTIVE:
        raise CodeDisabled()
    expires_at = batch.credit_expiry(now)
    if (batch.codes_expire_at is not None and batch.codes_expire_at <= now) or (
        expires_at is not None and expires_at <= now
    ):
        raise CodeExpired(expired_at=(batch.codes_expire_at or expires_at or now).isoformat())
    used = Redemption.objects.filter(batch=batch, user=user).count()
    if used >= batch.uses_per_account:
        if Redemption.objects.filter(code=code, user=user).exists():
            message = "You have already redeemed this code."
        elif batch.uses_per_account == 1:
            message = "You have already redeemed a code from this offer."
        else:
            message = f"You have already redeemed {used} codes from this offer, the most allowed."
        raise AlreadyRedeemed(message, uses_per_account=batch.uses_per_account)
    if code.uses >= code.max_uses:
        raise CodeExhausted()
    eligibility_check(batch=batch, user=user, now=now)
    sequence = used + 1
    entry = wallet_services.wallet_credit(
        wallet=wallet_id,
        amount=batch.credits_micro,
        category=CreditLot.Category.REDEMPTION,
        idempotency_key=f"redemption:{batch.pk}:{user.pk}:{sequence}",
        reference=wallet_services.Ref("redemption.redemptioncode", str(code.pk)),
        expires_at=expires_at,
        reason=f"Code {code.display} of “{batch.name}”",
        now=now,
    )
    assert entry.lot_id is not None  # a credit always writes a lot
    redemption = Redemption.objects.create(
        code=code,
        batch=batch,
        user=user,
        sequence=sequence,
        credits_micro=batch.credits_micro,
        ledger_entry=entry,
        lot_id=entry.lot_id,
        expires_at=expires_at,
        client_key=client_key,
        ip_address=ip_address,
        created_at=now,
    )
    RedemptionCode.objects.filter(pk=code.pk).update(uses=F("uses") + 1)
    return RedeemResult(redemption)
