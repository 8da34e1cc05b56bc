"""Usage transparency: opt-in content logging and its retention purge, the per-request
breakdown (which recomputes to the charge), and the CSV / JSON Lines exports."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from accounts import services as account_services
from accounts.models import ApiToken, Organization, User
from tests.helpers import assert_ledger_ok, credit
from tests.usage.conftest import Api, make_token
from usage import pricing, services, tasks
from usage.export import CONTENT_COLUMNS, HEADERS, UsageExport
from usage.models import UsageContent, UsageRecord
from usage.selectors import usage_record_list
from wallet import money
from wallet.models import Wallet

pytestmark = pytest.mark.django_db

SECRET_PROMPT = "the launch code is 0000-SWORDFISH"
CHAT = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": SECRET_PROMPT},
    ],
    "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    "tool_calls": [{"id": "c1", "function": {"name": "lookup", "arguments": "{}"}}],
    "response": "Acknowledged.",
}


def capture_with_content(api: Api, content: dict[str, Any], request_id: str = "r1") -> Any:
    authorization = api.post(
        "/api/v1/authorizations",
        {"model": "test-chat", "max_tokens": 100, "request_id": request_id},
    ).json()
    return api.post(
        f"/api/v1/authorizations/{authorization['id']}/capture",
        {"input_tokens": 20, "output_tokens": 5, "content": content},
    )


def stored_anywhere(text: str) -> bool:
    """Whether ``text`` is in any usage table (records, authorizations, content)."""
    with connection.cursor() as cursor:
        for table in ("usage_usagerecord", "usage_authorization", "usage_usagecontent"):
            cursor.execute(f"SELECT count(*) FROM {table} t WHERE t::text LIKE %s", [f"%{text}%"])
            if cursor.fetchone()[0]:
                return True
    return False


# --- Content logging ------------------------------------------------------------------


def test_content_is_never_stored_when_logging_is_off(
    user: User, funded: Wallet, prices: Any
) -> None:
    _, secret = make_token(user)
    response = capture_with_content(Api(secret), CHAT)
    assert response.status_code == 200, response.json()
    assert UsageContent.objects.count() == 0
    assert not stored_anywhere("SWORDFISH")
    record_id = response.json()["id"]
    assert Api(secret).get(f"/api/v1/usage/{record_id}").json()["content"] is None
    assert_ledger_ok(funded)


def test_a_logging_token_keeps_each_part(user: User, funded: Wallet, prices: Any) -> None:
    _, secret = make_token(user, log_content=True)
    api = Api(secret)
    response = capture_with_content(api, CHAT)
    content = UsageContent.objects.get(record_id=response.json()["id"])
    assert content.system == "You are terse."
    assert json.loads(content.messages) == [{"role": "user", "content": SECRET_PROMPT}]
    assert json.loads(content.tools)[0]["function"]["name"] == "lookup"
    assert json.loads(content.tool_calls)[0]["id"] == "c1"
    assert content.response == "Acknowledged."
    assert content.context_bytes == len(
        (content.system + content.messages + content.tools).encode()
    )
    assert not content.truncated
    shown = api.get(f"/api/v1/usage/{response.json()['id']}").json()["content"]
    assert shown["response"] == "Acknowledged."
    assert shown["context_bytes"] == content.context_bytes


@override_settings(CONTENT_LOG_MAX_CHARS=10)
def test_each_part_is_cut_to_the_configured_size(user: User, funded: Wallet, prices: Any) -> None:
    _, secret = make_token(user, log_content=True)
    response = capture_with_content(
        Api(secret), {"system": "s" * 50, "response": "r" * 11, "context_bytes": 12345}
    )
    content = UsageContent.objects.get(record_id=response.json()["id"])
    assert (content.system, content.response) == ("s" * 10, "r" * 10)
    assert content.truncated
    assert content.context_bytes == 12345  # as the gateway measured it


def test_an_organization_flag_logs_its_tokens_content(
    org_member: tuple[User, Organization], prices: Any
) -> None:
    member, organization = org_member
    owner = organization.memberships.get(role="owner").user
    token, secret = make_token(member, organization=organization)
    capture_with_content(Api(secret), CHAT, request_id="before")
    assert UsageContent.objects.count() == 0
    account_services.organization_set_content_logging(
        organization=organization, actor=owner, enabled=True
    )
    capture_with_content(Api(secret), CHAT, request_id="after")
    assert UsageContent.objects.count() == 1
    assert services.content_logging_enabled(token_id=token.pk)


def test_a_one_shot_record_keeps_content_only_when_logging(
    user: User, funded: Wallet, prices: Any
) -> None:
    for log, key in ((False, "k1"), (True, "k2")):
        _, secret = make_token(user, log_content=log)
        response = Api(secret).post(
            "/api/v1/usage",
            {"model": "test-chat", "output_tokens": 3, "content": CHAT},
            HTTP_IDEMPOTENCY_KEY=key,
        )
        assert response.status_code == 201, response.json()
    assert UsageContent.objects.count() == 1
    assert UsageContent.objects.get().record.request_id == "k2"


def test_the_purge_removes_only_expired_content(
    user: User, funded: Wallet, prices: Any, settings: Any
) -> None:
    settings.CONTENT_RETENTION_DAYS = 30
    token, _ = make_token(user, log_content=True)
    now = dt.datetime.now(dt.UTC)
    ages = {"old": 31, "edge": 30, "young": 29}
    for name, days in ages.items():
        services.usage_record_create_oneshot(
            token=ApiToken.objects.select_related("group__tier").get(pk=token.pk),
            model="test-chat",
            request_id=name,
            report=services.UsageReport(usage=pricing.Usage(output_tokens=1)),
            content=services.ContentLog(system="s", response=name),
        )
        UsageContent.objects.filter(record__request_id=name).update(
            created_at=now - dt.timedelta(days=days)
        )
    # Content exactly 30 days old is kept until it is older than 30 days.
    assert services.usage_content_purge(now=now) == 1
    assert sorted(UsageContent.objects.values_list("response", flat=True)) == ["edge", "young"]
    assert UsageRecord.objects.count() == 3  # the records and charges stay
    assert services.usage_content_purge(now=now) == 0  # idempotent
    # The task and the command run the same purge.
    assert tasks.usage_content_purge.delay().get() == 1  # "edge" has aged meanwhile
    call_command("usage_content_purge", stdout=io.StringIO())
    assert list(UsageContent.objects.values_list("response", flat=True)) == ["young"]
    assert_ledger_ok(funded)


# --- Breakdown ------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def recompute(formula: str) -> tuple[Decimal, int]:
    """Evaluate the formula's two steps from its own numbers: (usd_cost, µcr)."""
    usd_part, credits_part = formula.split("; ")
    usd_expr = usd_part.split(" = ")[1]
    usd = Decimal(0)
    for term in usd_expr.split(" + "):
        usd += _product(term)
    inner = credits_part.split("ceil(")[1].split(")")[0]
    micro = money.round_micro(_product(inner))
    return usd, micro


def _product(term: str) -> Decimal:
    term = term.strip()
    if term.startswith("(") and ")" in term:
        left, _, rest = term[1:].partition(")")
        a, b = (Decimal(x) for x in left.split(" - "))
        term = f"{a - b}{rest}"
    value = Decimal(1)
    for factor in term.split(" x "):
        if " / " in factor:
            top, bottom = factor.split(" / ")
            value *= Decimal(top) / Decimal(bottom)
        else:
            value *= Decimal(factor)
    return value


BREAKDOWN_CASES = [
    # (model, usage, tier rate, markup, credits per USD)
    (
        "test-chat",
        {"input_tokens": 1200, "cached_input_tokens": 1000, "output_tokens": 310},
        "1",
        "1",
        1,
    ),
    ("test-chat", {"input_tokens": 1, "output_tokens": 1}, "0.3", "1.2", 1000),
    ("test-chat", {"input_tokens": 7, "output_tokens": 3}, "1.5", "1.07", 1),
    (
        "test-reasoner",
        {
            "input_tokens": 5000,
            "cached_input_tokens": 4999,
            "output_tokens": 17,
            "reasoning_tokens": 4096,
        },
        "0.3333",
        "1",
        1,
    ),
    ("test-search", {"input_tokens": 0, "output_tokens": 0}, "1", "1.2", 1000),
    ("test-image", {"input_tokens": 33, "task_units": Decimal("3")}, "0.75", "1.15", 1),
    ("test-image", {"input_tokens": 0, "task_units": Decimal("0.5")}, "1", "1", 7),
]


@pytest.mark.parametrize(("model", "usage", "tier_rate", "markup", "per_usd"), BREAKDOWN_CASES)
def test_the_breakdown_recomputes_to_the_charged_amount(
    user: User,
    prices: Any,
    settings: Any,
    model: str,
    usage: dict[str, Any],
    tier_rate: str,
    markup: str,
    per_usd: int,
) -> None:
    settings.PRICE_MARKUP = markup
    settings.CREDITS_PER_USD = per_usd
    credit(Wallet.objects.get(user=user), "100000")
    tier = account_services.billing_tier_create(name=f"tier-{tier_rate}", rate=tier_rate)
    group = account_services.token_group_create(name=f"group-{tier_rate}", tier=tier)
    token, secret = make_token(user, group=group)
    result = services.usage_record_create_oneshot(
        token=ApiToken.objects.select_related("group__tier").get(pk=token.pk),
        model=model,
        request_id="b1",
        report=services.UsageReport(usage=pricing.Usage(**usage)),
    )
    body = Api(secret).get(f"/api/v1/usage/{result.record.pk}").json()
    breakdown = body["breakdown"]
    record = result.record
    assert breakdown["cost_micro"] == record.cost_micro
    assert breakdown["cost"] == body["cost"] == f"{money.micro_to_credits(record.cost_micro):.6f}"
    assert breakdown["price_id"] == record.price_id
    assert Decimal(breakdown["tier_rate"]) == Decimal(tier_rate)
    assert Decimal(breakdown["markup"]) == Decimal(markup)
    assert Decimal(breakdown["credits_per_usd"]) == per_usd
    usd, micro = recompute(breakdown["formula"])
    assert usd == Decimal(breakdown["usd_cost"]) == record.usd_cost
    assert micro == record.cost_micro == record.charged_micro
    assert sum(Decimal(line["usd"]) for line in breakdown["lines"]) == usd
    assert money.round_micro(Decimal(breakdown["exact_micro"])) == micro
    assert "rounded up" in breakdown["rounding"]


def test_the_breakdown_of_someone_elses_record_is_a_404(
    user: User, other_user: User, funded: Wallet, prices: Any
) -> None:
    token, _ = make_token(user)
    record = services.usage_record_create_oneshot(
        token=ApiToken.objects.select_related("group__tier").get(pk=token.pk),
        model="test-chat",
        request_id="x",
        report=services.UsageReport(usage=pricing.Usage(output_tokens=1)),
    ).record
    credit(Wallet.objects.get(user=other_user), "1")
    _, their_secret = make_token(other_user)
    response = Api(their_secret).get(f"/api/v1/usage/{record.pk}")
    assert response.status_code == 404
    assert "breakdown" not in json.dumps(response.json())
    assert Api(their_secret).get("/api/v1/usage/999999").status_code == 404


# --- Exports --------------------------------------------------------------------------


def _records(token: ApiToken) -> None:
    for i, (endpoint, status) in enumerate(
        [
            ("chat.completions", "succeeded"),
            ("embeddings", "succeeded"),
            ("chat.completions", "failed"),
        ]
    ):
        services.usage_record_create_oneshot(
            token=ApiToken.objects.select_related("group__tier").get(pk=token.pk),
            model="test-chat",
            request_id=f"e{i}",
            endpoint=endpoint,
            report=services.UsageReport(usage=pricing.Usage(output_tokens=i + 1), status=status),
            content=services.ContentLog(system="=cmd()", response=f"answer {i}")
            if i == 0
            else None,
        )


def test_jsonl_export_filters_by_endpoint_and_shows_content_only_where_logged(
    user: User, funded: Wallet, prices: Any
) -> None:
    token, secret = make_token(user, log_content=True)
    _records(token)
    api = Api(secret)
    response = api.get("/api/v1/usage/export", {"format": "jsonl"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [line["request_id"] for line in lines] == ["e0", "e1", "e2"]
    assert lines[0]["content"]["response"] == "answer 0"
    assert "content" not in lines[1] and "content" not in lines[2]
    filtered = api.get(
        "/api/v1/usage/export",
        {"endpoint": "chat.completions", "status": "failed"},
        HTTP_ACCEPT="application/x-ndjson",
    )
    rows = [json.loads(x) for x in b"".join(filtered.streaming_content).splitlines()]
    assert [row["request_id"] for row in rows] == ["e2"]


@pytest.mark.parametrize("use_copy", [True, False])
def test_csv_content_columns_appear_only_when_content_was_logged(
    user: User, funded: Wallet, prices: Any, settings: Any, use_copy: bool
) -> None:
    settings.USAGE_EXPORT_COPY = use_copy
    token, secret = make_token(user, log_content=True)
    _records(token)
    api = Api(secret)

    def rows(**params: Any) -> list[list[str]]:
        response = api.get("/api/v1/usage/export", params)
        text = b"".join(response.streaming_content).decode()
        return list(csv.reader(io.StringIO(text)))

    everything = rows()
    headers = HEADERS + [c.header for c in CONTENT_COLUMNS]
    assert everything[0] == headers
    first = dict(zip(headers, everything[1], strict=True))
    assert first["content_response"] == "answer 0"
    assert first["content_system"] == "'=cmd()"  # spreadsheet-safe
    second = dict(zip(headers, everything[2], strict=True))
    assert second["content_response"] == second["content_context_bytes"] == ""
    # An export with no logged content has no content columns.
    assert rows(endpoint="embeddings")[0] == HEADERS


def test_copy_and_python_paths_agree_with_content_columns(
    user: User, funded: Wallet, prices: Any, settings: Any
) -> None:
    token, _ = make_token(user, log_content=True)
    _records(token)
    records = usage_record_list(user=user, wallet_id=token.wallet_id)
    settings.USAGE_EXPORT_COPY = True
    by_copy = parse(UsageExport(records).chunks())
    settings.USAGE_EXPORT_COPY = False
    assert parse(UsageExport(records).chunks()) == by_copy
    assert len(by_copy[0]) == len(HEADERS) + len(CONTENT_COLUMNS)


def parse(chunks: Any) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(chunks).decode())))
