"""The gateway's side of metering: what a call asks for (``Call``), the synchronous steps
run in the request's thread through ``sync_to_async`` (``admit`` before the upstream call,
``settle`` after it: one hop each), and the one place that turns what the upstream
answered into the ``UsageReport`` a capture prices (``capture_report``).

Every cap applies exactly as on the metering API: ``admit`` calls
``usage.services.authorization_create`` and ``settle`` calls ``authorization_capture`` or
``authorization_fail``; no money math happens here.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from rest_framework.exceptions import APIException

from accounts import services as account_services
from accounts.authentication import token_request_window
from accounts.errors import InsufficientScope
from accounts.middleware import credits_remaining_header
from accounts.models import ApiToken
from config import sql
from config.errors import ApplicationError, RateLimited
from usage import pricing, selectors, services
from usage.channels import Channel, channel_list_for_gateway
from usage.gateway.errors import InvalidRequest
from usage.models import Authorization, UsageRecord
from wallet import money
from wallet import selectors as wallet_selectors

CHAT = "chat.completions"
EMBEDDINGS = "embeddings"
_PATHS = {CHAT: "/chat/completions", EMBEDDINGS: "/embeddings"}


# --- The call -------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One client request, parsed: what to authorize and what to send upstream."""

    endpoint: str
    body: dict[str, Any]
    model: str
    stream: bool = False
    max_tokens: int | None = None
    messages: list[Any] | None = None
    prompt: str | None = None
    input_tokens: int | None = None
    # A stream's client asked for the usage chunk itself (we always ask the upstream for
    # it; a client that did not is not sent it).
    client_wants_usage: bool = False

    @property
    def path(self) -> str:
        return _PATHS[self.endpoint]


def _optional_count(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequest(f"{name} must be a non-negative integer.", param=name)
        return value
    return None


def call_parse(*, endpoint: str, raw: bytes) -> Call:
    """Validate just what metering needs; everything else goes upstream unchanged."""
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise InvalidRequest("The body must be a JSON object.") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if endpoint == EMBEDDINGS:
        return _embeddings_call(body, model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty array.", param="messages")
    stream = body.get("stream") is True
    wants_usage = False
    if stream:
        # Ask for the usage chunk at the end of the stream: it is what we charge.
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        body = dict(body, stream_options={**(options or {}), "include_usage": True})
    return Call(
        endpoint=CHAT,
        body=body,
        model=model,
        stream=stream,
        max_tokens=_optional_count(body, "max_completion_tokens", "max_tokens"),
        messages=messages,
        client_wants_usage=wants_usage,
    )


def _embeddings_call(body: dict[str, Any], model: str) -> Call:
    items = body.get("input")
    items = [items] if isinstance(items, str) else items
    if not isinstance(items, list) or not items:
        raise InvalidRequest("input must be a string or a non-empty array.", param="input")
    if all(isinstance(item, str) for item in items):
        return Call(EMBEDDINGS, body, model, max_tokens=0, prompt="".join(items))
    # Token ids: one integer per token, or one list of them per input.
    count = 0
    for item in items:
        ids = item if isinstance(item, list) else [item]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InvalidRequest("input must be strings or arrays of token ids.", param="input")
        count += len(ids)
    return Call(EMBEDDINGS, body, model, max_tokens=0, input_tokens=count)


# --- Admission (before the upstream call) ----------------------------------------------


@dataclass
class Admission:
    """An admitted call: the request, its token and authorization (the hold), and where
    to send it."""

    call: Call
    token: ApiToken
    authorization: Authorization
    channels: list[Channel]
    available_micro: int  # the wallet's available credits with this call's hold taken
    # Content logging is on for the token or its organization: keep the prompt and the
    # answer with the usage record (never otherwise).
    log_content: bool = False

    @property
    def credits_remaining(self) -> str:
        return credits_remaining_header(self.available_micro)


class Refused(Exception):
    """A refusal after the token was known: the error, and the header the response
    still carries."""

    def __init__(self, error: Exception, credits_remaining: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.credits_remaining = credits_remaining


def _available(token: ApiToken, available: int | None = None) -> int:
    if available is None:
        available = wallet_selectors.wallet_available(wallet_id=token.wallet_id)
    return available


def _credits_remaining(token: ApiToken, available: int | None = None) -> str:
    return credits_remaining_header(_available(token, available))


def token_admit(*, secret: str, client_ip: str) -> ApiToken:
    """An active inference token allowed from this address, within its request rate (the
    same per-token window as the DRF APIs' ``TokenRateThrottle``)."""
    token = account_services.api_token_authenticate(secret=secret, client_ip=client_ip)
    try:
        if not token.has_scope(ApiToken.Scope.INFERENCE):
            raise InsufficientScope(
                required_scope=ApiToken.Scope.INFERENCE, token_scopes=list(token.scopes)
            )
        limit = settings.API_TOKEN_RATE_LIMIT
        if limit > 0:
            window = token_request_window()
            if window.hit(str(token.pk)) > limit:
                raise RateLimited(
                    "Too many requests for this API token.",
                    retry_after=window.retry_after(str(token.pk)),
                )
    except (ApplicationError, APIException) as exc:
        raise Refused(exc, _credits_remaining(token)) from exc
    return token


def token_credits(*, secret: str, client_ip: str) -> str:
    """Admit the token alone (for a call refused before metering): its X-Credits-Remaining."""
    return _credits_remaining(token_admit(secret=secret, client_ip=client_ip))


def admit(*, secret: str, client_ip: str, call: Call) -> Admission:
    """Authenticate, check the token, and authorize the call (estimate, every cap, the
    hold) in one step; also load the channels to try."""
    token = token_admit(secret=secret, client_ip=client_ip)
    try:
        result = services.authorization_create(
            token=token,
            model=call.model,
            messages=call.messages,
            prompt=call.prompt,
            input_tokens=call.input_tokens,
            max_tokens=call.max_tokens,
            endpoint=call.endpoint,
            client_ip=client_ip or None,
        )
    except (ApplicationError, APIException) as exc:
        raise Refused(exc, _credits_remaining(token)) from exc
    return Admission(
        call=call,
        token=token,
        authorization=result.authorization,
        channels=channel_list_for_gateway(),
        available_micro=_available(token, result.available_after),
        log_content=services.content_logging_on(token=token),
    )


# --- The report and the settlement (after it) -------------------------------------------


@dataclass
class Outcome:
    """What became of the call upstream."""

    started_at: dt.datetime
    status: str = UsageRecord.Status.SUCCEEDED
    error: str = ""
    usage: Any = None  # the upstream's "usage" object, if it sent one
    output_chars: int = 0  # text produced, for when it did not
    channel: str = ""
    failovers: int = 0
    stream: bool = False
    relayed: bool = False  # a stream's relay started
    finished_at: dt.datetime = field(default_factory=timezone.now)
    # Kept only when the admission logs content.
    response_text: str = ""
    tool_calls: list[Any] | None = None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _detail(usage: dict[str, Any], group: str, name: str) -> Any:
    details = usage.get(group)
    return details.get(name, 0) if isinstance(details, dict) else 0


def _reported_usage(usage: Any) -> pricing.Usage | None:
    """The upstream's usage in our terms (OpenAI counts reasoning inside completion tokens
    and cached tokens inside prompt tokens); None when it is missing or malformed."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    cached = _count(_detail(usage, "prompt_tokens_details", "cached_tokens"))
    reasoning = _count(_detail(usage, "completion_tokens_details", "reasoning_tokens"))
    cached, reasoning = min(cached or 0, prompt), min(reasoning or 0, completion)
    return pricing.Usage(
        input_tokens=prompt,
        output_tokens=completion - reasoning,
        cached_input_tokens=cached,
        reasoning_tokens=reasoning,
    )


def capture_report(*, admission: Admission, outcome: Outcome) -> services.UsageReport:
    """The one place that turns a call (``admission.call``, the request) and what became
    of it upstream (``outcome``, the response) into the report the capture prices and
    records.

    The usage charged is the upstream's own counts when it reported them; otherwise the
    authorization's input estimate plus the produced text at four characters a token,
    marked ``estimated``."""
    usage = _reported_usage(outcome.usage)
    estimated = usage is None
    if usage is None:
        usage = pricing.Usage(
            input_tokens=admission.authorization.estimated_input_tokens,
            output_tokens=pricing.estimate_tokens(outcome.output_chars),
        )
    metadata: dict[str, Any] = {"extra": {"channel": outcome.channel, "stream": outcome.stream}}
    if outcome.failovers:
        metadata["retries"] = outcome.failovers
    return services.UsageReport(
        usage=usage,
        status=outcome.status,
        error=sql.storable_text(outcome.error[:1000]),
        started_at=outcome.started_at,
        finished_at=max(outcome.finished_at, outcome.started_at),
        estimated=estimated,
        metadata=metadata,
    )


def content_log(*, admission: Admission, outcome: Outcome) -> services.ContentLog | None:
    """What the call said and answered, when the admission logs content."""
    call = admission.call
    if not admission.log_content:
        return None
    if call.endpoint == EMBEDDINGS:
        items = call.body.get("input")
        return services.ContentLog(messages=items if isinstance(items, list) else [items])
    tools = call.body.get("tools")
    return services.ContentLog.from_chat(
        messages=call.messages,
        tools=tools if isinstance(tools, list) else None,
        response=outcome.response_text,
        tool_calls=outcome.tool_calls,
    )


def settle(*, admission: Admission, outcome: Outcome, produced: bool) -> str:
    """Capture the call (``produced``: the upstream answered, even in part) or record it
    failed with nothing charged and the hold released. Returns the X-Credits-Remaining
    value."""
    report = capture_report(admission=admission, outcome=outcome)
    content = content_log(admission=admission, outcome=outcome)
    if produced:
        result = services.authorization_capture(
            authorization=admission.authorization, report=report, content=content
        )
    else:
        result = services.authorization_fail(
            authorization=admission.authorization, report=report, content=content
        )
    return _credits_remaining(admission.token, result.available_after)


def settle_and_release(*, admission: Admission, outcome: Outcome, produced: bool) -> str:
    """``settle`` after the request's response went out: the database connection goes back
    to the pool (if there is one) right after, as no ``request_finished`` follows."""
    try:
        return settle(admission=admission, outcome=outcome, produced=produced)
    finally:
        close_old_connections()


def credits_projected(*, admission: Admission, outcome: Outcome) -> str:
    """X-Credits-Remaining for an answer sent before its capture: the credits available
    with the hold taken, plus the hold (released by the capture), less this call's cost,
    as the capture will charge it. Exact unless the wallet moved meanwhile."""
    report = capture_report(admission=admission, outcome=outcome)
    authorization = admission.authorization
    cost = pricing.price_usage(
        price=authorization.price, usage=report.usage, tier_rate=authorization.tier_rate
    ).credits_micro
    available = admission.available_micro + authorization.amount_micro - cost
    return credits_remaining_header(max(available, 0))


# --- The model list -------------------------------------------------------------------


def _usd(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def model_list(*, secret: str, client_ip: str) -> tuple[list[dict[str, Any]], str]:
    """The models this token may call, with their current prices (USD) and the factors
    that turn a price into credits for this token."""
    token = token_admit(secret=secret, client_ip=client_ip)
    markup, rate = Decimal(settings.PRICE_MARKUP), token.group.tier.rate
    per_usd = money.credits_per_usd()
    data = [
        {
            "id": price.model,
            "object": "model",
            "created": int(price.effective_from.timestamp()),
            "owned_by": price.provider,
            "name": price.display_name,
            "category": price.category,
            "pricing": {
                "currency": "USD",
                "input_per_mtok": _usd(price.input_usd_per_mtok),
                "cached_input_per_mtok": _usd(price.cached_rate),
                "output_per_mtok": _usd(price.output_usd_per_mtok),
                "reasoning_per_mtok": _usd(price.reasoning_rate),
                "per_request": _usd(price.request_usd),
                "per_unit": _usd(price.unit_usd),
                "unit_name": price.unit_name,
                "max_output_tokens": price.max_output_tokens,
                "markup": _usd(markup),
                "tier_rate": _usd(rate),
                "credits_per_usd": _usd(per_usd),
            },
        }
        for price in selectors.model_price_list()
        if services.model_allowed(token=token, model=price.model)
    ]
    return data, _credits_remaining(token)
