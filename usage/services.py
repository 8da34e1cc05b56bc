"""Metering: authorize, capture, release, and one-shot records, for any gateway.

Guarantees (DESIGN.md, "The request lifecycle"):

* Every cap is checked in ONE transaction with the effect it guards (the hold, or the
  charge of a one-shot record), with rows locked in the global order
  API token -> membership -> hold -> wallet -> lots. A refusal raises ``LimitRefused``
  (402/403, ``detail.limit_source``) or ``InsufficientCredits`` (402, ``wallet``) and the
  transaction rolls back: nothing changes.
* Credits in flight for a token or a member are not counted separately: they are the sum of
  the still-active holds of their unsettled authorizations, so ``wallet.services.holds_expire``
  (the one hold-expiry job) keeps every cap consistent.
* Spent amounts (token ``used_micro``, member spend this UTC month) change in the capture
  transaction, with the wallet capture and the ``UsageRecord``.
* Exactly once per request id: retrying an authorization, capture or one-shot record with
  the same body returns the first result (``replayed``); the same id with a different body
  raises ``IdempotencyConflict`` (409).

The interfaces (the metering API, the OpenAI-compatible gateway through ``sync_to_async``)
call these functions; none of them does money math of its own.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiToken, Membership
from config import cached_reads, sql
from config.errors import IdempotencyConflict
from config.ratelimit import RollingLimit
from usage import pricing, selectors
from usage.errors import (
    InvalidPrice,
    InvalidUsage,
    MemberLimitExceeded,
    MinimumBalanceRequired,
    ModelNotAllowed,
    RateLimitExceeded,
    TokenBudgetExceeded,
    TokenQuotaExceeded,
)
from usage.models import Authorization, ModelPrice, UsageContent, UsageRecord
from wallet import money
from wallet import selectors as wallet_selectors
from wallet import services as wallet_services
from wallet.errors import (
    HoldExpired,
    HoldReleased,
    IdempotencyKeyRequired,
    InsufficientCredits,
)
from wallet.models import Hold

MAX_REQUEST_ID = 150
AUTHORIZATION_STATUSES = [
    (s, s.capitalize()) for s in ("active", "captured", "released", "expired")
]
MIN_TTL_SECONDS = 10
MAX_TTL_SECONDS = 24 * 3600


# --- Inputs and results ---------------------------------------------------------------


@dataclass(frozen=True)
class UsageReport:
    """What a gateway reports about a finished request."""

    usage: pricing.Usage
    status: str = UsageRecord.Status.SUCCEEDED
    error: str = ""
    latency_ms: int | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    estimated: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthorizationResult:
    authorization: Authorization
    status: str  # the hold's: active, captured, released, expired
    replayed: bool = False
    # The wallet's available credits right after, when the wallet reported them (for the
    # X-Credits-Remaining header without another read); None otherwise.
    available_after: int | None = None


@dataclass(frozen=True)
class RecordResult:
    record: UsageRecord
    replayed: bool = False
    available_after: int | None = None


def _fingerprint(payload: dict[str, Any]) -> str:
    """SHA-256 of a canonical JSON form: equal requests have equal fingerprints."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _clean_request_id(request_id: str | None, *, required: bool = False) -> str:
    text = (request_id or "").strip()
    if not text:
        if required:
            raise IdempotencyKeyRequired()
        return uuid.uuid4().hex
    if len(text) > MAX_REQUEST_ID or not text.isprintable():
        raise InvalidUsage(
            f"A request id is at most {MAX_REQUEST_ID} printable characters.", field="request_id"
        )
    return text


def _validate_usage(usage: pricing.Usage) -> None:
    limit = settings.METERING_MAX_TOKENS
    for name in ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens"):
        value = getattr(usage, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise InvalidUsage(
                f"{name} must be a whole number from 0 to {limit}.", field=name, value=str(value)
            )
    if usage.cached_input_tokens > usage.input_tokens:
        raise InvalidUsage(
            "cached_input_tokens are part of input_tokens and cannot exceed them.",
            field="cached_input_tokens",
        )
    units = usage.task_units
    if not isinstance(units, Decimal) or not units.is_finite() or units < 0 or units > limit:
        raise InvalidUsage(f"task_units must be from 0 to {limit}.", field="task_units")


def _priced(breakdown: pricing.PriceBreakdown) -> int:
    return money.validate_micro(breakdown.credits_micro, allow_zero=True, field="cost")


# --- Permissions and caps -------------------------------------------------------------


def _patterns_allow(patterns: Sequence[str], model: str) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(model, p) for p in patterns)


def model_allowed(*, token: ApiToken, model: str) -> bool:
    """A model is allowed when the token's group and the token itself both allow it (an
    empty list allows every model)."""
    return _patterns_allow(token.group.allowed_models, model) and _patterns_allow(
        token.allowed_models, model
    )


def _require_model_allowed(token: ApiToken, model: str) -> None:
    if not model_allowed(token=token, model=model):
        raise ModelNotAllowed(model=model)


def _open_hold_ids(**authorization_filter: Any) -> Any:
    return Authorization.objects.filter(settled_at__isnull=True, **authorization_filter).values(
        "hold_id"
    )


def token_in_flight(*, token_id: int) -> int:
    """µcr reserved by the token's authorizations that are still in flight."""
    return selectors.tokens_in_flight(token_ids=[token_id]).get(token_id, 0)


def member_in_flight(*, membership_id: int) -> int:
    return wallet_selectors.hold_total_active(hold_ids=_open_hold_ids(membership_id=membership_id))


def _check_token_quota(token: ApiToken, amount: int, in_flight: int) -> None:
    if token.quota_micro is None:
        return
    remaining = token.quota_micro - token.used_micro - in_flight
    if amount > remaining:
        raise TokenQuotaExceeded(
            quota=token.quota_micro,
            used=token.used_micro,
            in_flight=in_flight,
            available=max(remaining, 0),
            requested=amount,
        )


def _check_token_budget(token: ApiToken, amount: int, in_flight: int, now: dt.datetime) -> None:
    """The token's budget for ``now``'s period: what was charged in the period plus what
    is in flight plus ``amount`` may not exceed it. Refusals say when it resets."""
    if token.budget_micro is None or not token.budget_period:
        return
    spent = account_services.api_token_budget_spent(token=token, now=now)
    remaining = token.budget_micro - spent - in_flight
    if amount > remaining:
        _, resets_at = account_services.budget_period_bounds(token.budget_period, now)
        raise TokenBudgetExceeded(
            period=token.budget_period,
            budget=token.budget_micro,
            spent_this_period=spent,
            in_flight=in_flight,
            available=max(remaining, 0),
            requested=amount,
            resets_at=resets_at.isoformat().replace("+00:00", "Z"),
            retry_after=max(math.ceil((resets_at - now).total_seconds()), 1),
        )


def _check_member_limit(membership: Membership, amount: int, now: dt.datetime) -> None:
    limit = membership.monthly_spend_limit_micro
    if limit is None:
        return
    spent = membership.spent_in(account_services.month_start(now))
    in_flight = member_in_flight(membership_id=membership.pk)
    remaining = limit - spent - in_flight
    if amount > remaining:
        raise MemberLimitExceeded(
            limit=limit,
            spent_this_month=spent,
            in_flight=in_flight,
            available=max(remaining, 0),
            requested=amount,
        )


def _caps_check(*, token: ApiToken, amount: int, now: dt.datetime) -> None:
    """Check every cap except the wallet's, which the hold or debit that follows checks
    under the wallet's lock. Must run inside the transaction that takes that hold/debit.

    Rows are locked in the global order (token, then membership): for update when a cap
    on them exists, else only against their deletion (key share), as the authorization's
    insert would lock them later, after the wallet. The
    token's lifetime quota and its periodic budget are checked under the same token lock,
    so concurrent requests can never exceed either. (The minimum balance is checked with
    the hold, under the wallet's lock: ``_require_min_balance``.)
    """
    if _token_caps(token):
        locked = account_services.api_token_lock(token_id=token.pk)
        in_flight = token_in_flight(token_id=token.pk)
        _check_token_quota(locked, amount, in_flight)
        _check_token_budget(locked, amount, in_flight, now)
    else:
        _key_share(_TOKEN_KEY_SHARE, token.pk)
    if token.membership_id is not None:
        if _member_caps(token):
            membership = account_services.membership_lock(membership_id=token.membership_id)
            _check_member_limit(membership, amount, now)
        else:
            _key_share(_MEMBER_KEY_SHARE, token.membership_id)


# The authorization's insert references the token and the membership (a key-share lock on
# each); taken here, before the wallet's lock, the locks follow the global order even for
# a row with no cap to check (see ``usage.sql.AUTHORIZATION_OPEN_V2``).
_TOKEN_KEY_SHARE = 'SELECT 1 FROM "accounts_apitoken" WHERE "id" = %s FOR KEY SHARE'  # noqa: S105 (SQL, not a secret)
_MEMBER_KEY_SHARE = 'SELECT 1 FROM "accounts_membership" WHERE "id" = %s FOR KEY SHARE'


def _key_share(statement: str, row_id: int) -> None:
    if connection.vendor == "postgresql":  # SQLite locks the whole database instead
        sql.execute(statement, [row_id])


def _token_caps(token: ApiToken) -> bool:
    return token.quota_micro is not None or token.budget_micro is not None


def _member_caps(token: ApiToken) -> bool:
    return token.membership_id is not None and (
        token.membership is None or token.membership.monthly_spend_limit_micro is not None
    )


def _caps_apply(token: ApiToken) -> bool:
    """A cap row (the token's or the member's) must be locked and checked first."""
    return _token_caps(token) or _member_caps(token)


def token_cacheable(token: ApiToken) -> bool:
    """Whether the metering fast path may keep ``token`` in its process's cache
    (``config.cached_reads``): its authorizations and captures are made in one
    call each, by the functions that check the token's state (no cap row to lock first,
    no per-token rate limit counted before the call)."""
    return (
        wallet_services.use_pg_functions()
        and not _caps_apply(token)
        and not token.rate_limit_rpm
        and not token.rate_limit_tpm
    )


def _spend_add(
    *,
    token_id: int,
    membership_id: int | None,
    amount: int,
    now: dt.datetime,
    charged_at: dt.datetime,
) -> None:
    """Count a charge against the token and the member (locks them: token, membership).
    The member's month is the request's (``now``: when it finished); the token's budget
    period is the charge's (``charged_at``), which only moves forward."""
    account_services.api_token_spend_add(token_id=token_id, amount=amount, now=charged_at)
    if membership_id is not None:
        account_services.membership_spend_add(membership_id=membership_id, amount=amount, now=now)


def _min_balance(token: ApiToken) -> int:
    """The minimum the token's wallet must have available to start a request (read with
    the token by ``api_token_authenticate``, else from the wallet)."""
    own = token.wallet_min_balance
    return wallet_selectors.wallet_min_balance(
        wallet_id=token.wallet_id, own=own[0] if own else None, known=own is not None
    )


def _require_min_balance(token: ApiToken, available_before: int) -> None:
    """No request starts while the wallet has fewer available credits than its minimum
    (``available_before``: what it had before this request's hold or charge)."""
    minimum = _min_balance(token)
    if available_before < minimum:
        raise MinimumBalanceRequired(
            minimum=minimum, available=max(available_before, 0), wallet_id=token.wallet_id
        )


def _min_balance_or(token: ApiToken, refusal: InsufficientCredits) -> Exception:
    """A wallet refusal, unless the wallet is also below its minimum: then that is what
    the caller is told (it explains why even a cheaper request would be refused)."""
    available = refusal.detail.get("available")
    if isinstance(available, int):
        try:
            _require_min_balance(token, available)
        except MinimumBalanceRequired as below:
            return below
    return refusal


_RATE = RollingLimit("token")


def _check_rate_limits(token: ApiToken, tokens: int, now: dt.datetime) -> None:
    """The token's requests and tokens per minute (rolling window, in Redis, across
    every web process). Fails open when Redis is unreachable."""
    if not token.rate_limit_rpm and not token.rate_limit_tpm:
        return
    refusal = _RATE.hit(
        str(token.pk),
        [("rpm", token.rate_limit_rpm or 0, 1), ("tpm", token.rate_limit_tpm or 0, tokens)],
        now=now.timestamp(),
    )
    if refusal is not None:
        unit = "requests" if refusal.limit == "rpm" else "tokens"
        raise RateLimitExceeded(
            f"This API token's limit of {refusal.maximum} {unit} per minute was reached.",
            limit=refusal.limit,
            maximum=refusal.maximum,
            current=refusal.current,
            requested=1 if refusal.limit == "rpm" else tokens,
            retry_after=refusal.retry_after,
        )


def _recount_tokens(authorization: Authorization, used_tokens: int, now: dt.datetime) -> None:
    """Tokens per minute counted the authorization's estimate (input plus the output
    reserve); once the request is settled, count what it really used instead, in the same
    one-second bucket, so the rest of the minute is limited by real usage."""
    token = authorization.token
    if not token.rate_limit_tpm:
        return
    counted = authorization.estimated_input_tokens + authorization.max_tokens
    _RATE.adjust(
        str(token.pk),
        "tpm",
        used_tokens - counted,
        at=authorization.created_at.timestamp(),
        now=now.timestamp(),
    )


# --- Authorize ------------------------------------------------------------------------


def _text_chars(messages: Iterable[Any] | None, prompt: str | None) -> int:
    chars = len(prompt or "")
    for message in messages or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return chars


def authorization_estimate(
    *,
    price: ModelPrice,
    tier_rate: Decimal,
    messages: Iterable[Any] | None = None,
    prompt: str | None = None,
    input_tokens: int | None = None,
    max_tokens: int | None = None,
    task_units: Decimal = Decimal(0),
) -> pricing.PriceBreakdown:
    """The most a request may cost: its input (counted, or estimated at four characters a
    token from the messages or prompt) plus ``max_tokens`` of output, capped by the model."""
    if input_tokens is None:
        input_tokens = pricing.estimate_tokens(_text_chars(messages, prompt))
    if max_tokens is not None and (isinstance(max_tokens, bool) or max_tokens < 0):
        raise InvalidUsage("max_tokens must be a positive whole number.", field="max_tokens")
    usage = pricing.estimate_usage(
        price=price,
        input_tokens=input_tokens,
        output_tokens=pricing.output_reserve(price=price, max_tokens=max_tokens),
        task_units=task_units,
    )
    _validate_usage(usage)
    return pricing.price_usage(price=price, usage=usage, tier_rate=tier_rate)


def authorization_status(*, authorization: Authorization) -> str:
    """active, captured, released or expired (the hold's status, which the expiry job
    keeps current)."""
    if (
        authorization.settled_at is not None
        and UsageRecord.objects.filter(authorization=authorization).exists()
    ):
        return "captured"
    if "hold" in authorization._state.fields_cache:
        return str(authorization.hold.status)
    return str(Hold.objects.values_list("status", flat=True).get(pk=authorization.hold_id))


def _authorization_replay(existing: Authorization, fingerprint: str) -> AuthorizationResult:
    if existing.body_hash != fingerprint:
        raise IdempotencyConflict(
            "This request id was already authorized with a different body.",
            request_id=existing.request_id,
        )
    return AuthorizationResult(
        existing, authorization_status(authorization=existing), replayed=True
    )


def authorization_create(
    *,
    token: ApiToken,
    model: str,
    messages: Iterable[Any] | None = None,
    prompt: str | None = None,
    input_tokens: int | None = None,
    max_tokens: int | None = None,
    task_units: Decimal = Decimal(0),
    request_id: str | None = None,
    endpoint: str = "",
    client_ip: str | None = None,
    ttl_seconds: int | None = None,
    now: dt.datetime | None = None,
    durable: bool | None = None,
) -> AuthorizationResult:
    """Estimate a request's cost and, in one transaction, check every cap and hold that
    many credits in the token's wallet.

    ``durable=False`` (the default unless ``HOLD_ASYNC_COMMIT`` is off) commits without
    waiting for PostgreSQL to flush the commit to disk: a database crash right after may
    forget the authorization and its hold (never a ledger entry: an authorization moves no
    money), which only frees the credits it reserved; the call then cannot be captured,
    so it goes uncharged. Consistency is unaffected, and any later durable commit (every
    capture is one) makes it durable too.

    ``token`` is an authenticated token (``api_token_authenticate`` loads its group, tier
    and membership). Refusals: ``UnknownModel`` (400), ``ModelNotAllowed`` (403),
    ``RateLimitExceeded`` (429, checked first, in Redis; fails open),
    ``TokenQuotaExceeded`` / ``TokenBudgetExceeded`` / ``MemberLimitExceeded`` /
    ``MinimumBalanceRequired`` / ``InsufficientCredits`` (402).
    """
    now = now or timezone.now()
    if durable is None:
        durable = not settings.HOLD_ASYNC_COMMIT
    price = selectors.model_price_current(model=model, now=now, checked=token_cacheable(token))
    _require_model_allowed(token, model)
    ttl = settings.WALLET_HOLD_TTL_SECONDS if ttl_seconds is None else ttl_seconds
    if not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
        raise InvalidUsage(
            f"ttl_seconds must be from {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}.",
            field="ttl_seconds",
        )
    estimate = authorization_estimate(
        price=price,
        tier_rate=token.group.tier.rate,
        messages=messages,
        prompt=prompt,
        input_tokens=input_tokens,
        max_tokens=max_tokens,
        task_units=task_units,
    )
    # A free request still holds one µcr, so it is counted and settled like any other.
    amount = max(_priced(estimate), 1)
    client_supplied = bool(request_id and request_id.strip())
    request_id = _clean_request_id(request_id)
    fingerprint = _fingerprint(
        {
            "model": model,
            "input_tokens": estimate.usage.input_tokens,
            "max_tokens": max_tokens,
            "task_units": task_units,
            "endpoint": endpoint,
            "ttl": ttl_seconds,
        }
    )
    if client_supplied:
        existing = Authorization.objects.filter(token=token, request_id=request_id).first()
        if existing is not None:
            return _authorization_replay(existing, fingerprint)
    usage = estimate.usage
    _check_rate_limits(token, usage.tokens, now)
    fields: dict[str, Any] = {
        "token": token,
        "user_id": token.user_id,
        "wallet_id": token.wallet_id,
        "membership_id": token.membership_id,
        "price": price,
        "token_group_id": token.group_id,
        "tier_rate": token.group.tier.rate,
        "request_id": request_id,
        "model": model,
        "endpoint": endpoint,
        "estimated_input_tokens": usage.input_tokens,
        "max_tokens": usage.output_tokens + usage.reasoning_tokens,
        "estimated_task_units": task_units,
        "amount_micro": amount,
        "body_hash": fingerprint,
        "client_ip": client_ip or None,
        "created_at": now,
        "expires_at": now + dt.timedelta(seconds=ttl),
    }
    try:
        opened = _open_in_one_call(token, fields, durable=durable)
        if opened is not None:
            return opened
        cached_reads.require_uncached()
        with transaction.atomic():
            if not durable:
                _commit_without_flush_wait()
            _caps_check(token=token, amount=amount, now=now)
            try:
                hold = wallet_services.hold_create(
                    wallet=token.wallet_id,
                    amount=amount,
                    request_id=_hold_request_id(token, request_id),
                    expires_at=fields["expires_at"],
                    reference=_hold_reference(token),
                    now=now,
                )
            except InsufficientCredits as refusal:
                raise _min_balance_or(token, refusal) from None
            # The hold's conditional update locked the wallet row until this transaction
            # ends, so what it reports is exact; a refusal rolls the hold back.
            after = getattr(hold, "available_after", None)
            if after is None:
                after = wallet_selectors.wallet_available(wallet_id=token.wallet_id, now=now)
            _require_min_balance(token, after + amount)
            authorization = sql.create(Authorization, hold=hold, **fields)
    except IntegrityError:
        existing = Authorization.objects.filter(token=token, request_id=request_id).first()
        if existing is None:
            raise
        return _authorization_replay(existing, fingerprint)
    return AuthorizationResult(
        authorization, Hold.Status.ACTIVE, available_after=hold.available_after
    )


def _hold_request_id(token: ApiToken, request_id: str) -> str:
    return f"{token.pk}:{request_id}"


def _hold_reference(token: ApiToken) -> wallet_services.Ref:
    return wallet_services.Ref("accounts.apitoken", str(token.pk))


_OPEN = f"SELECT * FROM usage_authorization_open({', '.join(['%s'] * 25)})"  # noqa: S608


def _open_in_one_call(
    token: ApiToken, fields: dict[str, Any], *, durable: bool
) -> AuthorizationResult | None:
    """The common case in one PostgreSQL call (``usage_authorization_open``: the hold,
    the minimum balance and the authorization), when no cap row needs locking first.
    None when it does not apply or did not succeed (it then changed nothing): the general
    path decides, and explains any refusal."""
    if not wallet_services.use_pg_functions() or _caps_apply(token):
        return None
    minimum = _min_balance(token)
    amount, now, expires_at = fields["amount_micro"], fields["created_at"], fields["expires_at"]
    hold_request = _hold_request_id(token, fields["request_id"])
    reference = _hold_reference(token)
    with wallet_services.statement_scope():
        row = sql.fetch_one(
            _OPEN,
            [
                token.wallet_id, amount, hold_request, expires_at, reference.type,
                reference.id, now, minimum, not durable,
                token.pk, token.user_id, token.membership_id, fields["price"].pk,
                token.group_id, fields["tier_rate"], fields["request_id"], fields["model"],
                fields["endpoint"], fields["estimated_input_tokens"], fields["max_tokens"],
                fields["estimated_task_units"], fields["body_hash"], fields["client_ip"],
                token.cached_state, fields["price"].from_memory,
            ],
        )  # fmt: skip
    assert row is not None
    outcome, authorization_id, hold_id, available_after = row
    if outcome == "stale":  # what was read from memory is out of date: nothing was done
        raise cached_reads.ReadAgain()
    if outcome != "ok":
        return None
    cached_reads.confirm()
    kept_fields = {name: value for name, value in fields.items() if name != "token"}

    def build() -> Authorization:
        hold = wallet_services.hold_reserved(
            hold_id=hold_id,
            wallet_id=token.wallet_id,
            request_id=hold_request,
            amount=amount,
            expires_at=expires_at,
            reference=reference,
            now=now,
            available_after=available_after,
        )
        opened = sql.new(Authorization, hold=hold, token_id=token.pk, **kept_fields)
        return sql.stored(opened, authorization_id)

    authorization = build()
    authorization._state.fields_cache["token"] = token
    selectors.authorization_keep(authorization_id=authorization_id, token_id=token.pk, build=build)
    return AuthorizationResult(authorization, Hold.Status.ACTIVE, available_after=available_after)


def _commit_without_flush_wait() -> None:
    if connection.vendor == "postgresql":
        sql.execute("SET LOCAL synchronous_commit TO OFF", [])


# --- Content logging --------------------------------------------------------------------


@dataclass(frozen=True)
class ContentLog:
    """What a request said and answered, as a gateway saw it. Kept only when logging is
    on for the token or its organization (``content_logging_enabled``)."""

    system: str = ""
    messages: list[Any] | None = None
    tools: list[Any] | None = None
    tool_calls: list[Any] | None = None
    response: str = ""
    context_bytes: int | None = None

    @classmethod
    def from_chat(
        cls,
        *,
        messages: Iterable[Any] | None = None,
        tools: list[Any] | None = None,
        response: str = "",
        tool_calls: list[Any] | None = None,
    ) -> ContentLog:
        """Split an OpenAI-style message list: system messages apart, the rest as the
        prompt."""
        system: list[str] = []
        prompt: list[Any] = []
        for message in messages or ():
            if isinstance(message, dict) and message.get("role") in ("system", "developer"):
                content = message.get("content")
                system.append(content if isinstance(content, str) else _json(content))
            else:
                prompt.append(message)
        return cls(
            system="\n\n".join(system),
            messages=prompt,
            tools=tools or None,
            tool_calls=tool_calls or None,
            response=response or "",
        )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def content_logging_enabled(*, token_id: int) -> bool:
    """Content logging is on for a token when its own flag or its organization's is."""
    flags = (
        ApiToken.objects.filter(pk=token_id)
        .values_list("log_content", "organization__log_content")
        .first()
    )
    return bool(flags and (flags[0] or flags[1]))


def content_logging_on(*, token: ApiToken) -> bool:
    """``content_logging_enabled`` for a loaded token, reading nothing more when its own
    flag decides (on, or off without an organization)."""
    if token.log_content:
        return True
    return token.organization_id is not None and content_logging_enabled(token_id=token.pk)


def _content_store(
    *,
    record: UsageRecord,
    token: ApiToken | None,
    token_id: int | None,
    content: ContentLog | None,
    now: dt.datetime,
) -> None:
    """Keep ``content`` with ``record`` if logging is on (asked of ``token`` when it is
    loaded, else read), each part cut to ``CONTENT_LOG_MAX_CHARS``; otherwise nothing of
    it is written anywhere."""
    if content is None or token_id is None:
        return
    if token is not None and token.pk == token_id:
        enabled = content_logging_on(token=token)
    else:
        enabled = content_logging_enabled(token_id=token_id)
    if not enabled:
        return
    limit = settings.CONTENT_LOG_MAX_CHARS
    parts = {
        "system": content.system or "",
        "messages": _json(content.messages) if content.messages else "",
        "tools": _json(content.tools) if content.tools else "",
        "tool_calls": _json(content.tool_calls) if content.tool_calls else "",
        "response": content.response or "",
    }
    context_bytes = content.context_bytes
    if context_bytes is None:
        context = [parts["system"], parts["messages"], parts["tools"]]
        context_bytes = sum(len(part.encode()) for part in context)
    UsageContent.objects.create(
        record=record,
        context_bytes=context_bytes,
        truncated=any(len(text) > limit for text in parts.values()),
        created_at=now,
        **{name: sql.storable_text(text[:limit]) for name, text in parts.items()},
    )


def usage_content_purge(*, now: dt.datetime | None = None, batch_size: int = 5000) -> int:
    """Delete logged content older than ``CONTENT_RETENTION_DAYS`` (by its request's
    time), in batches so no long lock is held. Usage records and charges are untouched.
    Idempotent; returns how many were deleted."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=settings.CONTENT_RETENTION_DAYS)
    deleted = 0
    while True:
        batch = list(
            UsageContent.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[
                :batch_size
            ]
        )
        if not batch:
            return deleted
        deleted += UsageContent.objects.filter(pk__in=batch).delete()[0]


# --- Capture --------------------------------------------------------------------------


class _AlreadySettled(Exception):
    pass


_SETTLE = (
    'UPDATE "usage_authorization" SET "settled_at" = %s WHERE "id" = %s AND "settled_at" IS NULL'
)


def _report_fingerprint(report: UsageReport, **extra: Any) -> str:
    payload = asdict(report)
    payload.update(extra)
    return _fingerprint(payload)


def _record_replay(record: UsageRecord, fingerprint: str) -> RecordResult:
    if record.body_hash != fingerprint:
        raise IdempotencyConflict(
            "This request was already recorded with different usage.",
            request_id=record.request_id,
        )
    return RecordResult(record, replayed=True)


# A request is timed in whole milliseconds in a 32-bit column: no request may span more
# than a week, and none can finish in the future (beyond a little clock skew).
MAX_REQUEST_SPAN = dt.timedelta(days=7)
CLOCK_SKEW = dt.timedelta(minutes=5)


def _request_span(
    report: UsageReport, *, default_start: dt.datetime | None, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """When the request started and finished: as reported, else from the authorization (or
    the reported latency) and now. Impossible spans are ``InvalidUsage`` (400)."""
    finished_at = report.finished_at or now
    started_at = (
        report.started_at
        or default_start
        or (finished_at - dt.timedelta(milliseconds=report.latency_ms or 0))
    )
    if finished_at > now + CLOCK_SKEW:
        raise InvalidUsage("finished_at is in the future.", field="finished_at")
    if finished_at < started_at:
        raise InvalidUsage("finished_at is before started_at.", field="finished_at")
    if finished_at - started_at > MAX_REQUEST_SPAN:
        raise InvalidUsage("A request cannot span more than 7 days.", field="started_at")
    return started_at, finished_at


def _record_fields(
    *,
    breakdown: pricing.PriceBreakdown,
    report: UsageReport,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    fingerprint: str,
) -> dict[str, Any]:
    latency = report.latency_ms
    if latency is None:
        latency = max(int((finished_at - started_at).total_seconds() * 1000), 0)
    usage = breakdown.usage
    return {
        "price_id": breakdown.price_id,
        "model": breakdown.model,
        "status": report.status,
        "error": report.error,
        "started_at": started_at,
        "finished_at": finished_at,
        "latency_ms": latency,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "task_units": usage.task_units,
        "unit_name": breakdown.unit_name,
        "input_usd_per_mtok": breakdown.input_usd_per_mtok,
        "output_usd_per_mtok": breakdown.output_usd_per_mtok,
        "cached_input_usd_per_mtok": breakdown.cached_input_usd_per_mtok,
        "reasoning_usd_per_mtok": breakdown.reasoning_usd_per_mtok,
        "request_usd": breakdown.request_usd,
        "unit_usd": breakdown.unit_usd,
        "markup": breakdown.markup,
        "tier_rate": breakdown.tier_rate,
        "credits_per_usd": breakdown.credits_per_usd,
        "usd_cost": breakdown.usd_cost,
        "cost_micro": breakdown.credits_micro,
        "charged_micro": breakdown.credits_micro,
        "shortfall_micro": 0,
        "estimated": report.estimated,
        "metadata": report.metadata,
        "body_hash": fingerprint,
    }


def _apply_shortfall(
    record: UsageRecord, charge: wallet_services.Charge, *, membership_id: int | None
) -> None:
    """The wallet could not cover the whole cost: record what was charged, and count only
    that against the token and the member."""
    if not charge.shortfall:
        return
    UsageRecord.objects.filter(pk=record.pk).update(
        charged_micro=charge.charged, shortfall_micro=charge.shortfall
    )
    record.charged_micro, record.shortfall_micro = charge.charged, charge.shortfall
    if record.token_id is not None:
        _spend_add(
            token_id=record.token_id,
            membership_id=membership_id,
            amount=-charge.shortfall,
            now=record.finished_at,
            charged_at=record.created_at,
        )


def authorization_capture(
    *,
    authorization: Authorization,
    report: UsageReport,
    content: ContentLog | None = None,
    now: dt.datetime | None = None,
) -> RecordResult:
    """Price the actual usage at the authorization's price version and tier rate, charge
    it against the hold (burning lots), release the rest of the hold, write the
    ``UsageRecord`` and count the charge against the token and member: one transaction,
    exactly once per authorization.

    If the cost exceeds the hold plus the wallet's available credits, what is available is
    charged and the rest recorded as ``shortfall``. A hold that expired before the capture
    is charged the same way, without its reservation (the request did run), for up to
    ``METERING_LATE_CAPTURE_SECONDS`` after its expiry; later, ``HoldExpired``. Capturing a
    released authorization raises ``HoldReleased``. ``content`` (the prompt and response)
    is kept only when the token or its organization logs content; a replay keeps the
    first capture's.
    """
    now = now or timezone.now()
    fingerprint = _report_fingerprint(report)
    if authorization.settled_at is not None:
        return _capture_replay(authorization, fingerprint)
    _validate_usage(report.usage)
    breakdown = pricing.price_usage(
        price=authorization.price, usage=report.usage, tier_rate=authorization.tier_rate
    )
    cost = _priced(breakdown)
    span = _request_span(report, default_start=authorization.created_at, now=now)
    record = _record_build(
        authorization, breakdown=breakdown, report=report, fingerprint=fingerprint, span=span,
        now=now,
    )  # fmt: skip
    try:
        captured = _capture_in_one_call(authorization, record, cost=cost, content=content, now=now)
        if captured is None:
            captured = _capture_general(authorization, record, cost=cost, content=content, now=now)
    except _AlreadySettled:
        fresh = Authorization.objects.select_related("hold", "price").get(pk=authorization.pk)
        return _capture_replay(fresh, fingerprint)
    except HoldReleased:
        Authorization.objects.filter(pk=authorization.pk, settled_at__isnull=True).update(
            settled_at=now
        )
        raise
    _recount_tokens(authorization, report.usage.tokens, now)
    return captured


def _capture_spend(authorization: Authorization, record: UsageRecord, cost: int) -> None:
    """Count the charge against the token and the member (first, in the capture's
    transaction: the global lock order)."""
    _spend_add(
        token_id=authorization.token_id,
        membership_id=authorization.membership_id,
        amount=cost,
        now=record.finished_at,
        charged_at=record.created_at,
    )


def _capture_general(
    authorization: Authorization,
    record: UsageRecord,
    *,
    cost: int,
    content: ContentLog | None,
    now: dt.datetime,
) -> RecordResult:
    """Every case of a capture, step by step in one transaction: an expired hold charged
    without its reservation, a shortfall, a released hold (``HoldReleased``)."""
    cached_reads.require_uncached()
    with transaction.atomic():
        _capture_spend(authorization, record, cost)
        _authorization_settle(authorization, record, now=now, content=content)
        reference = wallet_services.Ref.to(record)
        try:
            charge = wallet_services.hold_capture(
                hold=authorization.hold_id, amount=cost, reference=reference, now=now
            )
        except HoldExpired:
            charge = _charge_without_hold(authorization, cost, reference, now)
        _apply_shortfall(record, charge, membership_id=authorization.membership_id)
    return RecordResult(record, available_after=charge.available_after)


_CAPTURE = f"SELECT * FROM usage_capture_counted({', '.join(['%s'] * 13)})"  # noqa: S608
GENERAL_PATH = "UC001"  # SQLSTATE of usage_capture's "take the general path"
SETTLED = "UC002"  # SQLSTATE of usage_capture_counted's "already settled"
STATE_CHANGED = "UC003"  # SQLSTATE of usage_capture_counted's "the cached token changed"


def _capture_in_one_call(
    authorization: Authorization,
    record: UsageRecord,
    *,
    cost: int,
    content: ContentLog | None,
    now: dt.datetime,
) -> RecordResult | None:
    """The common capture (the hold active, the cost covered) as one PostgreSQL statement,
    ``usage_capture_counted``: the spend counters, the settlement, the record and the
    capture. Without content to keep it is its own transaction (one round trip). None
    when the call undid itself for the general path (``_capture_general``)."""
    if not wallet_services.use_pg_functions():
        return None
    token = authorization._state.fields_cache.get("token")
    params = [
        authorization.token_id,
        authorization.membership_id,
        *account_services.budget_period_starts(record.created_at),
        account_services.month_start(record.finished_at),
        authorization.pk,
        authorization.hold_id,
        cost,
        Hold.capture_key_of(authorization.hold_id),
        now,
        sql.json_row(record),
        token.cached_state if token is not None else None,
    ]
    # Without content to store it is one call, scoped as the wallet's are: its own
    # transaction (no BEGIN and COMMIT), or a savepoint inside a caller's, so the general
    # path can run after the call undid itself.
    try:
        with wallet_services.statement_scope() if content is None else transaction.atomic():
            row = sql.fetch_one(_CAPTURE, params)
            assert row is not None
            _, record_id, _, _, available_after = row
            sql.stored(record, record_id)
            _record_saved(authorization, record, now=now, content=content)
    except DatabaseError as exc:
        state = getattr(exc.__cause__, "sqlstate", None)
        if state == GENERAL_PATH:
            return None
        if state == SETTLED:
            raise _AlreadySettled() from exc
        if state == STATE_CHANGED:
            raise cached_reads.ReadAgain() from exc
        raise
    cached_reads.confirm()
    return RecordResult(record, available_after=available_after)


def _record_build(
    authorization: Authorization,
    *,
    breakdown: pricing.PriceBreakdown,
    report: UsageReport,
    fingerprint: str,
    span: tuple[dt.datetime, dt.datetime],
    now: dt.datetime,
) -> UsageRecord:
    """The authorization's usage record, not yet saved."""
    started_at, finished_at = span
    return sql.new(
        UsageRecord,
        request_id=authorization.request_id,
        authorization=authorization,
        wallet_id=authorization.wallet_id,
        user_id=authorization.user_id,
        token_id=authorization.token_id,
        token_group_id=authorization.token_group_id,
        endpoint=authorization.endpoint,
        client_ip=authorization.client_ip,
        created_at=now,
        **_record_fields(
            breakdown=breakdown,
            report=report,
            started_at=started_at,
            finished_at=finished_at,
            fingerprint=fingerprint,
        ),
    )


def _record_saved(
    authorization: Authorization,
    record: UsageRecord,
    *,
    now: dt.datetime,
    content: ContentLog | None,
) -> None:
    """After the record's insert, in its transaction: cache what the response reads, and
    keep the content when logging is on."""
    token = authorization._state.fields_cache.get("token")
    _cache_token_group(record, token)
    _content_store(
        record=record, token=token, token_id=authorization.token_id, content=content, now=now
    )


def _authorization_settle(
    authorization: Authorization,
    record: UsageRecord,
    *,
    now: dt.datetime,
    content: ContentLog | None = None,
) -> UsageRecord:
    """Mark the authorization settled (once: ``_AlreadySettled`` otherwise) and insert its
    usage record (built by ``_record_build``), and its content when logging is on. Runs
    inside the settling transaction."""
    if not sql.execute(_SETTLE, [now, authorization.pk]):
        raise _AlreadySettled()
    sql.save_new(record)
    _record_saved(authorization, record, now=now, content=content)
    return record


def _cache_token_group(record: UsageRecord, token: ApiToken | None) -> None:
    """The record's group is the token's (already loaded): spare the response a query."""
    if token is not None and token.group_id == record.token_group_id:
        record._state.fields_cache["token_group"] = token.group


def _charge_without_hold(
    authorization: Authorization, cost: int, reference: wallet_services.Ref, now: dt.datetime
) -> wallet_services.Charge:
    if cost == 0:
        return wallet_services.Charge(None, 0, 0, 0)
    return wallet_services.wallet_debit(
        wallet=authorization.wallet_id,
        amount=cost,
        idempotency_key=Hold.capture_key_of(authorization.hold_id),
        reference=reference,
        allow_partial=True,
        now=now,
    )


def _capture_replay(authorization: Authorization, fingerprint: str) -> RecordResult:
    record = UsageRecord.objects.filter(authorization=authorization).first()
    if record is not None:
        return _record_replay(record, fingerprint)
    hold_status = Hold.objects.values_list("status", flat=True).get(pk=authorization.hold_id)
    if hold_status == Hold.Status.EXPIRED:
        raise HoldExpired(hold_id=authorization.hold_id, authorization_id=authorization.pk)
    raise HoldReleased(hold_id=authorization.hold_id, authorization_id=authorization.pk)


# --- Release --------------------------------------------------------------------------


def authorization_release(
    *, authorization: Authorization, now: dt.datetime | None = None
) -> AuthorizationResult:
    """Give the held credits back (the request failed before using anything). Releasing
    twice is harmless; releasing a captured authorization raises ``HoldAlreadyCaptured``."""
    now = now or timezone.now()
    with transaction.atomic():
        settled = Authorization.objects.filter(pk=authorization.pk, settled_at__isnull=True).update(
            settled_at=now
        )
        hold = wallet_services.hold_release(hold=authorization.hold_id, now=now)
    if settled:
        _recount_tokens(authorization, 0, now)
    authorization.settled_at = authorization.settled_at or now
    return AuthorizationResult(authorization, hold.status)


def authorization_fail(
    *,
    authorization: Authorization,
    report: UsageReport,
    content: ContentLog | None = None,
    now: dt.datetime | None = None,
) -> RecordResult:
    """The request failed before producing anything (the gateway's upstream error): give
    the hold back and record the request with ``report.status`` (failed or cancelled) and
    nothing charged, not even a per-request fee: one transaction, exactly once per
    authorization (a replay returns the first record)."""
    now = now or timezone.now()
    fingerprint = _report_fingerprint(report)
    if authorization.settled_at is not None:
        return _capture_replay(authorization, fingerprint)
    free = pricing.price_usage(
        price=authorization.price, usage=pricing.Usage(), tier_rate=authorization.tier_rate
    )
    # The record's factors must recompute to its charge: no fee on a failed request.
    free = replace(free, request_usd=Decimal(0), usd_cost=Decimal(0), credits_micro=0)
    span = _request_span(report, default_start=authorization.created_at, now=now)
    record = _record_build(
        authorization, breakdown=free, report=report, fingerprint=fingerprint, span=span,
        now=now,
    )  # fmt: skip
    try:
        with transaction.atomic():
            _authorization_settle(authorization, record, now=now, content=content)
            hold = wallet_services.hold_release(hold=authorization.hold_id, now=now)
    except _AlreadySettled:
        fresh = Authorization.objects.select_related("hold", "price").get(pk=authorization.pk)
        return _capture_replay(fresh, fingerprint)
    authorization.settled_at = now
    _recount_tokens(authorization, 0, now)
    return RecordResult(record, available_after=getattr(hold, "available_after", None))


def authorizations_close_stale(*, batch_size: int = 1000, now: dt.datetime | None = None) -> int:
    """Housekeeping: close authorizations whose hold expired unsettled more than
    ``METERING_LATE_CAPTURE_SECONDS`` ago. Until then a late capture is still charged (the
    request did run); after, it is refused with ``HoldExpired``. Closing keeps the partial
    indexes the cap checks scan small; the caps are right without it (they count active
    holds only)."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=settings.METERING_LATE_CAPTURE_SECONDS)
    stale = list(
        Authorization.objects.filter(settled_at__isnull=True, expires_at__lte=cutoff)
        .exclude(hold__status=Hold.Status.ACTIVE)
        .values_list("pk", flat=True)[:batch_size]
    )
    return Authorization.objects.filter(pk__in=stale, settled_at__isnull=True).update(
        settled_at=now
    )


# --- One-shot records -----------------------------------------------------------------


def usage_record_create_oneshot(
    *,
    token: ApiToken,
    model: str,
    report: UsageReport,
    request_id: str,
    endpoint: str = "",
    client_ip: str | None = None,
    content: ContentLog | None = None,
    now: dt.datetime | None = None,
) -> RecordResult:
    """Record and charge a finished request in one step (no authorization first).

    ``request_id`` (the ``Idempotency-Key``) is required. The caps (quota, budget, member
    limit, minimum balance) are checked against the actual cost in the same transaction
    as the charge, like an authorization: a refusal (402/403 with ``limit_source``)
    records and charges nothing. Rate limits gate the start of a request only, so they do
    not apply to a finished one. ``content`` is kept only when the token or its
    organization logs content.
    """
    now = now or timezone.now()
    request_id = _clean_request_id(request_id, required=True)
    fingerprint = _report_fingerprint(report, model=model, endpoint=endpoint)
    existing = UsageRecord.objects.filter(token=token, request_id=request_id).first()
    if existing is not None:
        return _record_replay(existing, fingerprint)
    price = selectors.model_price_current(model=model, now=now)
    _require_model_allowed(token, model)
    _validate_usage(report.usage)
    breakdown = pricing.price_usage(
        price=price, usage=report.usage, tier_rate=token.group.tier.rate
    )
    cost = _priced(breakdown)
    started_at, finished_at = _request_span(report, default_start=None, now=now)
    try:
        with transaction.atomic():
            _caps_check(token=token, amount=cost, now=now)
            # Counted before the debit: the token and membership rows are locked before the
            # wallet's (global lock order). The debit refuses rather than charge in part.
            _spend_add(
                token_id=token.pk,
                membership_id=token.membership_id,
                amount=cost,
                now=finished_at,
                charged_at=now,
            )
            record = sql.create(
                UsageRecord,
                request_id=request_id,
                wallet_id=token.wallet_id,
                user_id=token.user_id,
                token=token,
                token_group_id=token.group_id,
                endpoint=endpoint,
                client_ip=client_ip or None,
                created_at=now,
                **_record_fields(
                    breakdown=breakdown,
                    report=report,
                    started_at=started_at,
                    finished_at=finished_at,
                    fingerprint=fingerprint,
                ),
            )
            _cache_token_group(record, token)
            available_after = None
            if cost:
                try:
                    available_after = wallet_services.wallet_debit(
                        wallet=token.wallet_id,
                        amount=cost,
                        idempotency_key=f"usage-record:{record.pk}",
                        reference=wallet_services.Ref.to(record),
                        now=now,
                    ).available_after
                except InsufficientCredits as refusal:
                    raise _min_balance_or(token, refusal) from None
            if available_after is None:
                available_after = wallet_selectors.wallet_available(
                    wallet_id=token.wallet_id, now=now
                )
            _require_min_balance(token, available_after + cost)
            _content_store(record=record, token=token, token_id=token.pk, content=content, now=now)
    except IntegrityError:
        existing = UsageRecord.objects.filter(token=token, request_id=request_id).first()
        if existing is None:
            raise
        return _record_replay(existing, fingerprint)
    return RecordResult(record, available_after=available_after)


# --- The price catalog ----------------------------------------------------------------


def model_price_create(
    *,
    model: str,
    display_name: str,
    provider: str,
    category: str = ModelPrice.Category.CHAT,
    input_usd_per_mtok: object = 0,
    output_usd_per_mtok: object = 0,
    cached_input_usd_per_mtok: object = None,
    reasoning_usd_per_mtok: object = None,
    request_usd: object = 0,
    unit_usd: object = 0,
    unit_name: str = "",
    max_output_tokens: int | None = None,
    active: bool = True,
    effective_from: dt.datetime | None = None,
    created_by: Any = None,
    now: dt.datetime | None = None,
) -> ModelPrice:
    """Add a version of a model's price. Versions are never edited: a price change, or
    taking a model off the catalog (``active=False``), is a new version. A version cannot
    take effect in the past, so what was charged before stays explained by the catalog."""
    now = now or timezone.now()
    effective_from = effective_from or now
    if effective_from < now - dt.timedelta(minutes=1):
        raise InvalidPrice("A new price cannot take effect in the past.", field="effective_from")
    model = (model or "").strip()
    if not model or len(model) > 100 or any(c.isspace() for c in model):
        raise InvalidPrice("A model id is 1 to 100 characters without spaces.", field="model")

    def usd(value: object, name: str, places: int) -> Decimal:
        parsed = money.to_decimal(value, field=name)
        if parsed < 0 or -parsed.as_tuple().exponent > places:  # type: ignore[operator]
            raise InvalidPrice(f"{name} must be >= 0 with at most {places} decimals.", field=name)
        return parsed

    def optional(value: object, name: str) -> Decimal | None:
        return None if value is None or value == "" else usd(value, name, 6)

    return ModelPrice.objects.create(
        model=model,
        display_name=display_name.strip() or model,
        provider=provider.strip(),
        category=category,
        input_usd_per_mtok=usd(input_usd_per_mtok, "input_usd_per_mtok", 6),
        output_usd_per_mtok=usd(output_usd_per_mtok, "output_usd_per_mtok", 6),
        cached_input_usd_per_mtok=optional(cached_input_usd_per_mtok, "cached_input_usd_per_mtok"),
        reasoning_usd_per_mtok=optional(reasoning_usd_per_mtok, "reasoning_usd_per_mtok"),
        request_usd=usd(request_usd, "request_usd", 8),
        unit_usd=usd(unit_usd, "unit_usd", 8),
        unit_name=unit_name.strip(),
        max_output_tokens=max_output_tokens,
        active=active,
        effective_from=effective_from,
        created_at=now,
        created_by=created_by,
    )
