"""The read APIs: wallet, ledger, usage records and their export; nobody else's data."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import ApiToken, User
from tests.helpers import credit
from tests.usage.conftest import Api, error_code, make_token
from usage import pricing, services
from usage.models import UsageRecord
from wallet.models import Wallet

pytestmark = pytest.mark.django_db


def record(token: ApiToken, request_id: str, **usage: Any) -> UsageRecord:
    model = usage.pop("model", "test-chat")
    status = usage.pop("status", "succeeded")
    endpoint = usage.pop("endpoint", "chat.completions")
    usage.setdefault("input_tokens", 10)
    return services.usage_record_create_oneshot(
        token=token,
        model=model,
        request_id=request_id,
        endpoint=endpoint,
        report=services.UsageReport(usage=pricing.Usage(**usage), status=status),
    ).record


def export_rows(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200, response.content
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def mine(user: User, funded: Wallet, prices) -> tuple[ApiToken, str]:  # type: ignore[no-untyped-def]
    return make_token(user)


@pytest.fixture
def theirs(other_user: User, prices) -> tuple[ApiToken, str]:  # type: ignore[no-untyped-def]
    credit(Wallet.objects.get(user=other_user), "50")
    return make_token(other_user)


def test_wallet_shows_balances_consumption_and_lots(mine, funded: Wallet) -> None:  # type: ignore[no-untyped-def]
    token, secret = mine
    credit(funded, "5", category="promotional", expires_at=timezone.now() + dt.timedelta(days=3))
    record(token, "a", output_tokens=1000)  # 0.010025 with 10 input tokens
    body = Api(secret).get("/api/v1/wallet").json()
    assert (body["balance"], body["held"], body["available"]) == (
        "104.989975",
        "0.000000",
        "104.989975",
    )
    assert body["consumption"] == {"requests": 1, "charged": "0.010025", "shortfall": "0.000000"}
    categories = {c["category"]: c for c in body["categories"]}
    assert categories["paid"]["remaining"] == "100.000000"
    assert categories["promotional"]["remaining"] == "4.989975"  # promotional burns first
    assert categories["promotional"]["expiring_lots"][0]["remaining"] == "4.989975"
    assert body["token"]["used"] == "0.010025" and body["token"]["quota"] is None
    assert body["owner"] == {"type": "user", "name": token.user.email}


def test_ledger_lists_the_wallets_entries_newest_first(mine, funded: Wallet) -> None:  # type: ignore[no-untyped-def]
    token, secret = mine
    record(token, "a")
    record(token, "b")
    api = Api(secret)
    page = api.get("/api/v1/ledger", {"limit": 2}).json()
    assert [e["kind"] for e in page["results"]] == ["usage", "usage"]
    assert page["results"][0]["id"] > page["results"][1]["id"]
    rest = api.get(page["next"]).json()
    assert [e["kind"] for e in rest["results"]] == ["topup"] and rest["next"] is None
    assert api.get("/api/v1/ledger", {"kind": "topup"}).json()["results"][0]["amount"] == (
        "100.000000"
    )
    response = api.get("/api/v1/ledger", {"kind": "nonsense"})
    assert response.status_code == 400 and error_code(response) == "invalid_input"


def test_only_owners_and_admins_read_an_organizations_ledger(org_member, prices) -> None:  # type: ignore[no-untyped-def]
    member, organization = org_member
    owner = organization.memberships.get(role="owner").user
    _, member_secret = make_token(member, organization=organization)
    _, owner_secret = make_token(owner, organization=organization)
    response = Api(member_secret).get("/api/v1/ledger")
    assert response.status_code == 403 and error_code(response) == "not_allowed"
    assert Api(owner_secret).get("/api/v1/ledger").status_code == 200
    # the member can still see the pool's balance
    assert Api(member_secret).get("/api/v1/wallet").json()["balance"] == "100.000000"


def test_usage_list_paginates_with_a_cursor(mine) -> None:  # type: ignore[no-untyped-def]
    token, secret = mine
    made = [record(token, f"r{i}").pk for i in range(7)]
    api = Api(secret)
    seen: list[int] = []
    page = api.get("/api/v1/usage", {"limit": 3}).json()
    while True:
        seen += [r["id"] for r in page["results"]]
        if not page["next"]:
            break
        page = api.get(page["next"]).json()
    assert seen == sorted(made, reverse=True)
    response = api.get("/api/v1/usage", {"cursor": "garbage"})
    assert response.status_code == 404


def test_usage_filters(mine, user: User) -> None:  # type: ignore[no-untyped-def]
    token, secret = mine
    second, _ = make_token(user)
    a = record(token, "a", model="test-chat", endpoint="chat")
    b = record(token, "b", model="test-search", status="failed", endpoint="search")
    c = record(second, "c", model="test-chat", endpoint="chat")
    UsageRecord.objects.filter(pk=a.pk).update(created_at=timezone.now() - dt.timedelta(days=2))
    api = Api(secret)

    def ids(**params: Any) -> list[int]:
        response = api.get("/api/v1/usage", params)
        assert response.status_code == 200, response.json()
        return [r["id"] for r in response.json()["results"]]

    assert ids() == [c.pk, b.pk, a.pk]
    assert ids(model="test-chat") == [c.pk, a.pk]
    assert ids(status="failed") == [b.pk]
    assert ids(endpoint="chat") == [c.pk, a.pk]
    assert ids(token=second.pk) == [c.pk]
    since = (timezone.now() - dt.timedelta(days=1)).isoformat()
    assert ids(since=since) == [c.pk, b.pk]
    assert ids(until=since) == [a.pk]
    for bad in ({"since": "yesterday"}, {"status": "weird"}, {"token": "x"}, {"limit": "x"}):
        response = api.get("/api/v1/usage", bad)
        if "limit" in bad:  # an unusable page size falls back to the default
            assert response.status_code == 200
            continue
        assert response.status_code == 400 and error_code(response) == "invalid_input"


def test_usage_detail(mine) -> None:  # type: ignore[no-untyped-def]
    token, secret = mine
    made = record(token, "a", output_tokens=5)
    body = Api(secret).get(f"/api/v1/usage/{made.pk}").json()
    assert body["id"] == made.pk and body["usage"]["output_tokens"] == 5


def test_export_streams_the_filtered_records_as_csv(mine) -> None:  # type: ignore[no-untyped-def]
    token, secret = mine
    a = record(token, "a", model="test-chat")
    record(token, "b", model="test-search")
    response = Api(secret).get("/api/v1/usage/export", {"model": "test-chat"})
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="usage-')
    rows = export_rows(response)
    assert [int(r["id"]) for r in rows] == [a.pk]
    assert rows[0]["cost"] == rows[0]["charged"] == "0.000025"
    assert rows[0]["usd_cost"] == "0.00002500000000"
    bad = Api(secret).get("/api/v1/usage/export", {"since": "not a date"})
    assert bad.status_code == 400 and error_code(bad) == "invalid_input"


def test_export_neutralizes_spreadsheet_formulas(mine) -> None:  # type: ignore[no-untyped-def]
    token, secret = mine
    services.usage_record_create_oneshot(
        token=token,
        model="test-chat",
        request_id="=HYPERLINK(1)",
        endpoint="+chat",
        report=services.UsageReport(
            usage=pricing.Usage(input_tokens=1), status="failed", error="@SUM(A1)"
        ),
    )
    row = export_rows(Api(secret).get("/api/v1/usage/export"))[0]
    assert (row["request_id"], row["endpoint"], row["error"]) == (
        "'=HYPERLINK(1)",
        "'+chat",
        "'@SUM(A1)",
    )


# --- Nobody else's data (IDOR) --------------------------------------------------------


def test_a_token_never_sees_another_users_records(mine, theirs) -> None:  # type: ignore[no-untyped-def]
    my_token, my_secret = mine
    their_token, _their_secret = theirs
    my_record = record(my_token, "same-id")
    their_record = record(their_token, "same-id")
    me = Api(my_secret)
    assert [r["id"] for r in me.get("/api/v1/usage").json()["results"]] == [my_record.pk]
    assert me.get("/api/v1/usage", {"token": their_token.pk}).json()["results"] == []
    response = me.get(f"/api/v1/usage/{their_record.pk}")
    assert response.status_code == 404 and error_code(response) == "usage_record_not_found"
    assert [int(r["id"]) for r in export_rows(me.get("/api/v1/usage/export"))] == [my_record.pk]
    assert [
        int(r["id"]) for r in export_rows(me.get("/api/v1/usage/export", {"token": their_token.pk}))
    ] == []
    wallet = me.get("/api/v1/wallet").json()
    assert wallet["wallet_id"] == my_token.wallet_id
    assert wallet["consumption"]["requests"] == 1
    ledger = me.get("/api/v1/ledger").json()["results"]
    assert {e["reference_id"] for e in ledger if e["kind"] == "usage"} == {str(my_record.pk)}


def test_members_of_one_pool_do_not_see_each_others_records(org_member, prices) -> None:  # type: ignore[no-untyped-def]
    member, organization = org_member
    owner = organization.memberships.get(role="owner").user
    member_token, member_secret = make_token(member, organization=organization)
    owner_token, owner_secret = make_token(owner, organization=organization)
    members = record(member_token, "m")
    owners = record(owner_token, "o")
    member_api, owner_api = Api(member_secret), Api(owner_secret)
    assert [r["id"] for r in member_api.get("/api/v1/usage").json()["results"]] == [members.pk]
    assert [r["id"] for r in owner_api.get("/api/v1/usage").json()["results"]] == [owners.pk]
    assert member_api.get(f"/api/v1/usage/{owners.pk}").status_code == 404
    assert owner_api.get(f"/api/v1/usage/{members.pk}").status_code == 404
    assert [int(r["id"]) for r in export_rows(member_api.get("/api/v1/usage/export"))] == [
        members.pk
    ]
    assert member_api.get("/api/v1/wallet").json()["consumption"]["requests"] == 1


def test_a_personal_token_does_not_see_the_users_pool_records(org_member, prices) -> None:  # type: ignore[no-untyped-def]
    member, organization = org_member
    pool_token, _ = make_token(member, organization=organization)
    credit(Wallet.objects.get(user=member), "1")
    _, personal_secret = make_token(member)
    pooled = record(pool_token, "p")
    api = Api(personal_secret)
    assert api.get("/api/v1/usage").json()["results"] == []
    assert api.get(f"/api/v1/usage/{pooled.pk}").status_code == 404


def test_a_session_reads_its_own_wallet_and_records(client, mine, theirs) -> None:  # type: ignore[no-untyped-def]
    my_token, _ = mine
    their_token, _ = theirs
    mine_record = record(my_token, "x")
    theirs_record = record(their_token, "x")
    client.force_login(my_token.user)
    assert client.get("/api/v1/wallet").json()["wallet_id"] == my_token.wallet_id
    assert [r["id"] for r in client.get("/api/v1/usage").json()["results"]] == [mine_record.pk]
    assert client.get(f"/api/v1/usage/{theirs_record.pk}").status_code == 404


def test_anonymous_reads_are_refused(client, mine) -> None:  # type: ignore[no-untyped-def]
    for path in ("/api/v1/wallet", "/api/v1/ledger", "/api/v1/usage", "/api/v1/usage/export"):
        response = client.get(path)
        assert response.status_code == 401 and error_code(response) == "not_authenticated"
