"""The metering fast path (``usage.fastpath``) answers as the full stack (middleware, DRF)
does: the same requests, sent to the live ASGI application once with the fast path and
once without it, get the same status, headers and body, for successes, replays and every
kind of refusal. Ids and times, which differ between two successes, are compared by shape."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from rest_framework.views import APIView

from accounts import services as account_services
from accounts.models import User
from tests.factories import UserFactory
from tests.helpers import assert_ledger_ok, credit, ledger_state
from tests.usage.conftest import make_token
from usage import fastpath
from usage.models import Authorization, UsageRecord
from wallet.models import Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

AUTHORIZE = "/api/v1/authorizations"
USAGE = {"input_tokens": 120, "output_tokens": 30, "metadata": {"retries": 1}}
# Values that differ between two successful requests, compared by shape only.
_VOLATILE = {
    "id", "authorization_id", "request_id", "created_at", "expires_at", "started_at",
    "finished_at", "latency_ms",
}  # fmt: skip
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture
def http(gateway: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


@pytest.fixture
def secret(customer: User, funded_wallet: Wallet, chat_price: Any) -> str:
    return make_token(customer, scopes=("metering",))[1]


def _shape(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if key in _VOLATILE and value is not None:
        return "<time>" if isinstance(value, str) and _TIME.match(value) else "<id>"
    return value


class Answer:
    def __init__(self, response: httpx.Response, fast: bool) -> None:
        self.fast = fast
        self.status = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}
        self.headers.pop("date", None)  # the server's clock
        self.headers.pop("server", None)
        self.body = response.json()

    def comparable(self, *, volatile: bool) -> tuple[Any, ...]:
        headers = dict(self.headers)
        body = self.body
        if "retry-after" in headers:  # seconds to the window's end: the clock moved on
            assert 1 <= int(headers["retry-after"]) <= 61
            headers["retry-after"] = "<seconds>"
            body = json.loads(json.dumps(body))
            body["error"]["detail"]["retry_after"] = "<seconds>"
            body["error"]["message"] = re.sub(
                r"\d+ seconds?", "<n> seconds", body["error"]["message"]
            )
        if volatile:  # two successes: balances, ids and lengths differ
            for name in ("content-length", "x-credits-remaining"):
                headers[name] = "<varies>" if name in headers else None
            body = _shape(body)
        return self.status, headers, body


def _send(
    http: httpx.Client, settings: Any, *, fast: bool, path: str, secret: str | None, body: Any
) -> Answer:
    settings.METERING_FAST_PATH = fast
    before = fastpath.served
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(
        path, content=content, headers={**headers, "Content-Type": "application/json"}
    )
    assert fastpath.served == before + (1 if fast else 0), "served by the wrong path"
    return Answer(response, fast)


def _both(
    http: httpx.Client,
    settings: Any,
    path: str,
    body: Any,
    *,
    secret: str | None,
    volatile: bool = False,
    second_body: Any = None,
) -> tuple[Answer, Answer]:
    fast = _send(http, settings, fast=True, path=path, secret=secret, body=body)
    full = _send(
        http, settings, fast=False, path=path, secret=secret,
        body=body if second_body is None else second_body,
    )  # fmt: skip
    assert fast.comparable(volatile=volatile) == full.comparable(volatile=volatile)
    return fast, full


def _authorize_body(request_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "test-chat",
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 100,
        "request_id": request_id,
        **extra,
    }


def test_an_authorization_and_its_capture_answer_alike(
    http: httpx.Client, settings: Any, secret: str, funded_wallet: Wallet
) -> None:
    fast, full = _both(
        http, settings, AUTHORIZE, _authorize_body("a1"), secret=secret, volatile=True,
        second_body=_authorize_body("a2"),
    )  # fmt: skip
    assert fast.status == 201 and "x-credits-remaining" in fast.headers
    # Replays are identical, body and headers.
    _both(http, settings, AUTHORIZE, _authorize_body("a1"), secret=secret)
    first, second = fast.body["id"], full.body["id"]
    captured_fast = _send(
        http, settings, fast=True, path=f"{AUTHORIZE}/{first}/capture", secret=secret, body=USAGE
    )
    captured_full = _send(
        http, settings, fast=False, path=f"{AUTHORIZE}/{second}/capture", secret=secret,
        body=USAGE,
    )  # fmt: skip
    assert captured_fast.status == 200
    assert captured_fast.comparable(volatile=True) == captured_full.comparable(volatile=True)
    # A capture replayed, and one with different usage (409), answer alike.
    _both(http, settings, f"{AUTHORIZE}/{first}/capture", USAGE, secret=secret)
    _both(
        http, settings, f"{AUTHORIZE}/{first}/capture", {**USAGE, "output_tokens": 31},
        secret=secret,
    )  # fmt: skip
    assert UsageRecord.objects.count() == 2
    assert not Authorization.objects.filter(settled_at__isnull=True).exists()
    assert_ledger_ok(funded_wallet)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_request"),
        (b"[1, 2]", "invalid_input"),
        ({"model": "test-chat", "max_tokens": -1}, "invalid_input"),
        ({"model": "no-such-model", "max_tokens": 10}, None),
        ({"model": "test-chat", "max_tokens": 10, "ttl_seconds": "soon"}, "invalid_input"),
        ({"max_tokens": 10}, "invalid_input"),
    ],
)
def test_refused_authorizations_answer_alike_and_change_nothing(
    http: httpx.Client,
    settings: Any,
    secret: str,
    funded_wallet: Wallet,
    body: Any,
    code: str | None,
) -> None:
    before = ledger_state(funded_wallet)
    fast, _ = _both(http, settings, AUTHORIZE, body, secret=secret)
    assert fast.status >= 400
    if code is not None:
        assert fast.status == 400 and fast.body["error"]["code"] == code
    assert not Authorization.objects.exists()
    assert ledger_state(funded_wallet) == before


def test_token_refusals_answer_alike(
    http: httpx.Client, settings: Any, customer: User, funded_wallet: Wallet, chat_price: Any
) -> None:
    before = ledger_state(funded_wallet)
    body = _authorize_body("t1")
    unknown = "sk-live-abcdefabcdef-" + "x" * 40
    fast, _ = _both(http, settings, AUTHORIZE, body, secret=unknown)
    assert fast.status == 401 and fast.headers["www-authenticate"] == 'Bearer realm="api"'
    inference_only = make_token(customer, scopes=("inference",))[1]
    fast, _ = _both(http, settings, AUTHORIZE, body, secret=inference_only)
    assert fast.status == 403
    token, revoked = make_token(customer, scopes=("metering",))
    account_services.api_token_revoke(token=token)
    fast, _ = _both(http, settings, AUTHORIZE, body, secret=revoked)
    assert fast.status == 401
    narrow = make_token(customer, scopes=("metering",), allowed_ips=["10.9.9.9"])[1]
    fast, _ = _both(http, settings, AUTHORIZE, body, secret=narrow)
    assert fast.status == 403
    assert not Authorization.objects.exists()
    assert ledger_state(funded_wallet) == before


def test_a_broke_wallet_and_the_rate_limit_answer_alike(
    http: httpx.Client, settings: Any, chat_price: Any
) -> None:
    poor = UserFactory()
    wallet = Wallet.objects.get(user=poor)
    credit(wallet, "0.000001")
    before = ledger_state(wallet)
    secret = make_token(poor, scopes=("metering",))[1]
    fast, _ = _both(http, settings, AUTHORIZE, _authorize_body("p1"), secret=secret)
    assert fast.status == 402 and "limit_source" in fast.body["error"]["detail"]
    settings.API_TOKEN_RATE_LIMIT = 2  # two refusals above used the minute's two requests
    fast, _ = _both(http, settings, AUTHORIZE, _authorize_body("p2"), secret=secret)
    assert fast.status == 429 and "retry-after" in fast.headers
    assert not Authorization.objects.exists()
    assert ledger_state(wallet) == before


def test_refusals_are_logged_as_the_full_stack_logs_them(
    http: httpx.Client, settings: Any, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    for fast in (True, False):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="django.request"):
            _send(http, settings, fast=fast, path=AUTHORIZE, secret=secret, body=b"{oops")
        assert [(r.levelname, r.getMessage(), r.status_code) for r in caplog.records] == [  # type: ignore[attr-defined]
            ("WARNING", f"Bad Request: {AUTHORIZE}", 400)
        ]


def test_someone_elses_or_a_missing_authorization_is_not_found_alike(
    http: httpx.Client, settings: Any, secret: str, chat_price: Any
) -> None:
    other = UserFactory()
    credit(Wallet.objects.get(user=other), "10")
    other_secret = make_token(other, scopes=("metering",))[1]
    theirs = _send(
        http, settings, fast=True, path=AUTHORIZE, secret=other_secret,
        body=_authorize_body("x1"),
    ).body["id"]  # fmt: skip
    before = ledger_state(Wallet.objects.get(user=other))
    for path in (f"{AUTHORIZE}/{theirs}/capture", f"{AUTHORIZE}/999999999/capture"):
        fast, _ = _both(http, settings, path, USAGE, secret=secret)
        assert fast.status == 404
    bad_usage = {"input_tokens": -5}
    fast, _ = _both(http, settings, f"{AUTHORIZE}/{theirs}/capture", bad_usage, secret=other_secret)
    assert fast.status == 400
    assert not UsageRecord.objects.exists()
    assert ledger_state(Wallet.objects.get(user=other)) == before


def test_requests_the_fast_path_does_not_serve_take_the_full_stack(
    http: httpx.Client, settings: Any, secret: str
) -> None:
    settings.METERING_FAST_PATH = True
    before = fastpath.served
    auth = {"Authorization": f"Bearer {secret}"}
    body = json.dumps(_authorize_body("f1"))
    answers = [
        http.post(
            AUTHORIZE + "?x=1", content=body, headers={**auth, "Content-Type": "application/json"}
        ),
        http.post(AUTHORIZE, content=body, headers={**auth, "Content-Type": "text/plain"}),
        http.post(AUTHORIZE, content=body, headers={"Content-Type": "application/json"}),
        http.get(AUTHORIZE + "/1", headers=auth),
    ]
    assert fastpath.served == before
    assert [a.status_code for a in answers] == [201, 415, 401, 404]


class _Broken(APIView):
    """A view that fails as a bug would."""

    required_scope = "metering"

    def post(self, request: Any) -> Any:
        raise RuntimeError("a bug")


def test_an_unexpected_error_is_logged_and_answered_500_in_the_api_error_shape(
    secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = b"{}"
    scope = {
        "type": "http",
        "method": "POST",
        "path": AUTHORIZE,
        "query_string": b"",
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"authorization", f"Bearer {secret}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    assert fastpath.route(scope) is not None  # the request is one the fast path serves
    with caplog.at_level(logging.ERROR, logger="django.request"):
        status, headers, content = fastpath.serve(
            scope, body, fastpath.Route(_Broken, {}, len(body))
        )
    assert status == 500
    assert json.loads(content)["error"]["code"] == "server_error"
    assert (b"content-type", b"application/json") in headers
    assert "RuntimeError: a bug" in caplog.text
