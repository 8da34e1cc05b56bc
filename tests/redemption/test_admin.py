"""The admin: generate a batch (CSV once), disable batches and codes, export their state, find
a code a customer reads out, see who redeemed what."""

from __future__ import annotations

import csv
import io

import pytest
from django.test import Client

from redemption.errors import CodeDisabled
from redemption.models import Redemption, RedemptionBatch, RedemptionCode
from tests.factories import UserFactory
from tests.helpers import micro
from tests.redemption.conftest import make_batch, redeem

pytestmark = pytest.mark.django_db

GENERATE = "/admin/redemption/redemptionbatch/generate/"


@pytest.fixture
def admin_client(superuser) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(superuser)
    return client


def form(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "Conference cards",
        "credits": "2.5",
        "code_count": "25",
        "uses_per_code": "1",
        "uses_per_account": "1",
        "codes_expire_at": "",
        "credit_validity_days": "60",
        "credits_expire_at": "",
        "new_accounts_within_days": "",
        "min_account_age_days": "",
        "allowed_countries": "us, de",
        "allowed_emails": "",
    }
    data.update(overrides)
    return data


def rows(response) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_generate_downloads_the_codes_once_and_they_redeem(admin_client, superuser) -> None:
    page = admin_client.get(GENERATE)
    assert page.status_code == 200
    assert b"The codes are shown only once." in page.content
    invitee = UserFactory(email="vip@example.com", country="DE")
    response = admin_client.post(GENERATE, form(allowed_emails="VIP@example.com"))
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    assert "no-store" in response["Cache-Control"]
    codes = rows(response)
    assert len(codes) == 25
    assert codes[0]["batch"] == "Conference cards" and codes[0]["credits"] == "2.50"
    assert codes[0]["credits_expire"] == "60 days after redemption"
    batch = RedemptionBatch.objects.get()
    assert (batch.credits_micro, batch.code_count, batch.allowed_countries) == (
        micro("2.5"),
        25,
        "DE,US",
    )
    assert list(batch.allowed_users.all()) == [invitee]
    assert batch.created_by == superuser
    assert RedemptionCode.objects.filter(batch=batch).count() == 25
    assert redeem(invitee, codes[3]["code"]).redemption.credits_micro == micro("2.5")
    # The batch's page can no longer show the codes: only hints.
    change = admin_client.get(f"/admin/redemption/redemptionbatch/{batch.pk}/change/")
    assert change.status_code == 200
    assert codes[0]["code"].encode() not in change.content


def test_generate_refuses_bad_input_and_creates_nothing(admin_client) -> None:
    for bad in (
        {"credits": "0"},
        {"credits": "1.0000001"},
        {"code_count": "10001"},
        {"allowed_countries": "Germany"},
        {"allowed_emails": "nobody@example.com"},
    ):
        response = admin_client.post(GENERATE, form(**bad))
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/html"), bad
        assert b"errorlist" in response.content, bad
    assert not RedemptionBatch.objects.exists()


@pytest.mark.slow
def test_ten_thousand_codes_in_one_go(admin_client) -> None:
    response = admin_client.post(GENERATE, form(code_count="10000"))
    codes = rows(response)
    assert len(codes) == 10_000
    assert len({row["code"] for row in codes}) == 10_000
    assert RedemptionCode.objects.count() == 10_000


def test_add_goes_to_generate_and_needs_staff(admin_client, user) -> None:
    response = admin_client.get("/admin/redemption/redemptionbatch/add/")
    assert response.status_code == 302 and response["Location"].endswith("generate/")
    ordinary = Client()
    ordinary.force_login(UserFactory(is_staff=True))  # staff without permissions
    assert ordinary.get(GENERATE).status_code == 403
    assert ordinary.post(GENERATE, form()).status_code == 403
    assert not RedemptionBatch.objects.exists()


def test_disable_and_enable_a_batch(admin_client, user) -> None:
    generated = make_batch(code_count=2)
    url = "/admin/redemption/redemptionbatch/"
    admin_client.post(url, {"action": "disable_batches", "_selected_action": [generated.batch.pk]})
    with pytest.raises(CodeDisabled):
        redeem(user, generated.codes[0])
    admin_client.post(url, {"action": "enable_batches", "_selected_action": [generated.batch.pk]})
    assert redeem(user, generated.codes[0]).redemption


def test_disable_one_code(admin_client, user, other_user) -> None:
    leaked, fine = make_batch(code_count=2).codes
    code = RedemptionCode.objects.get(hint=leaked[-4:])
    admin_client.post(
        "/admin/redemption/redemptioncode/",
        {"action": "disable_codes", "_selected_action": [code.pk]},
    )
    with pytest.raises(CodeDisabled):
        redeem(user, leaked)
    assert redeem(other_user, fine).redemption


def test_find_a_code_and_see_who_redeemed_what(admin_client, user) -> None:
    generated = make_batch(code_count=3)
    redeem(user, generated.codes[1])
    found = admin_client.get("/admin/redemption/redemptioncode/", {"q": generated.codes[1].lower()})
    assert found.status_code == 200
    assert found.context["cl"].result_count == 1
    listing = admin_client.get(
        "/admin/redemption/redemption/", {"batch__id__exact": generated.batch.pk}
    )
    assert user.email.encode() in listing.content
    assert Redemption.objects.get().user == user
    export = admin_client.post(
        "/admin/redemption/redemptionbatch/",
        {"action": "export_status", "_selected_action": [generated.batch.pk]},
    )
    lines = rows(export)
    assert len(lines) == 3
    used = [line for line in lines if line["uses"] == "1"]
    assert [line["redeemed_by"] for line in used] == [user.email]
    assert used[0]["code"].endswith(generated.codes[1][-4:])
    assert all("••••" in line["code"] for line in lines)


def test_csv_cells_cannot_become_formulas(admin_client) -> None:
    response = admin_client.post(GENERATE, form(name="=HYPERLINK(1)", code_count="1"))
    assert rows(response)[0]["batch"] == "'=HYPERLINK(1)"
