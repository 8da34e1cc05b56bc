"""Caps under real concurrency: threads, separate connections, real commits."""

from __future__ import annotations

import pytest

from accounts import services as account_services
from accounts.models import ApiToken, Membership
from tests.factories import OrganizationFactory, UserFactory
from tests.helpers import assert_ledger_ok, credit, refresh
from tests.helpers import micro as credit_micro
from tests.wallet.test_concurrency import run_together
from usage import pricing, services
from usage.errors import MemberLimitExceeded, TokenBudgetExceeded, TokenQuotaExceeded
from usage.models import Authorization, UsageRecord
from wallet.errors import InsufficientCredits
from wallet.models import Hold, Wallet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TEN_MILLI = 10_000  # 1000 output tokens at $10/M


@pytest.fixture
def chat(db: None) -> None:
    services.model_price_create(
        model="test-chat", display_name="Chat", provider="Test", output_usd_per_mtok="10"
    )


def _authorize(token: ApiToken, i: int) -> Authorization:
    fresh = ApiToken.objects.select_related("group__tier", "membership").get(pk=token.pk)
    return services.authorization_create(
        token=fresh, model="test-chat", input_tokens=0, max_tokens=1000, request_id=f"r{i}"
    ).authorization


def test_fifty_concurrent_authorizations_never_exceed_a_token_quota_of_ten(chat: None) -> None:
    user = UserFactory()
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "1000")
    token, _ = account_services.api_token_create(
        user=user, name="t", scopes=["metering"], quota_credits="0.1"
    )
    results = run_together(50, lambda i: _authorize(token, i))
    granted = [r for r in results if isinstance(r, Authorization)]
    refused = [r for r in results if isinstance(r, TokenQuotaExceeded)]
    assert len(granted) == 10, [r for r in results if not isinstance(r, Authorization)][:3]
    assert len(refused) == 40
    assert all(r.detail["limit_source"] == "token_quota" for r in refused)
    held = sum(Hold.objects.filter(status="active").values_list("amount", flat=True))
    assert held == refresh(wallet).held == 10 * TEN_MILLI == token.quota_micro
    assert_ledger_ok(wallet)


def test_concurrent_authorizations_never_exceed_a_member_limit(chat: None) -> None:
    organization = OrganizationFactory()
    owner = organization.memberships.get().user
    member = UserFactory()
    account_services.membership_add(
        organization=organization, user=member, actor=owner, monthly_spend_limit_credits="0.05"
    )
    pool = Wallet.objects.get(organization=organization)
    credit(pool, "1000")
    # Two tokens of the same member share the limit.
    tokens = [
        account_services.api_token_create(
            user=member, name=f"t{n}", scopes=["metering"], organization=organization
        )[0]
        for n in range(2)
    ]
    results = run_together(30, lambda i: _authorize(tokens[i % 2], i))
    granted = [r for r in results if isinstance(r, Authorization)]
    assert len(granted) == 5
    assert sum(isinstance(r, MemberLimitExceeded) for r in results) == 25
    membership = Membership.objects.get(user=member)
    assert services.member_in_flight(membership_id=membership.pk) == 5 * TEN_MILLI
    assert_ledger_ok(pool)


def test_concurrent_captures_of_one_authorization_charge_once(chat: None) -> None:
    user = UserFactory()
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "10")
    token, _ = account_services.api_token_create(
        user=user, name="t", scopes=["metering"], quota_credits="5"
    )
    authorization = _authorize(token, 0)
    report = services.UsageReport(usage=pricing.Usage(output_tokens=500))

    def capture(i: int) -> int:
        fresh = Authorization.objects.select_related("price").get(pk=authorization.pk)
        return services.authorization_capture(authorization=fresh, report=report).record.pk

    results = run_together(20, capture)
    assert len(set(results)) == 1, results
    assert UsageRecord.objects.count() == 1
    assert refresh(wallet).balance == 10_000_000 - 5_000
    assert ApiToken.objects.get(pk=token.pk).used_micro == 5_000
    assert_ledger_ok(wallet)


def test_capture_and_release_race_settles_exactly_one_way(chat: None) -> None:
    user = UserFactory()
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "10")
    token, _ = account_services.api_token_create(user=user, name="t", scopes=["metering"])
    for attempt in range(5):
        authorization = _authorize(token, 100 + attempt)
        report = services.UsageReport(usage=pricing.Usage(output_tokens=100))

        def settle(
            i: int,
            authorization: Authorization = authorization,
            report: services.UsageReport = report,
        ) -> str:
            fresh = Authorization.objects.select_related("price").get(pk=authorization.pk)
            if i % 2:
                services.authorization_release(authorization=fresh)
                return "released"
            services.authorization_capture(authorization=fresh, report=report)
            return "captured"

        outcomes = run_together(6, settle)
        hold = Hold.objects.get(pk=authorization.hold_id)
        captured = UsageRecord.objects.filter(authorization=authorization).exists()
        assert hold.status == ("captured" if captured else "released"), outcomes
    assert refresh(wallet).held == 0
    assert_ledger_ok(wallet)


def test_concurrent_requests_racing_a_budget_never_exceed_it(chat: None) -> None:
    """40 threads authorize and capture at once against a daily budget of seven requests'
    worth: seven are charged, the rest refused with token_budget, and what was spent this
    period is exactly the budget."""
    user = UserFactory()
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "1000")
    token, _ = account_services.api_token_create(
        user=user,
        name="t",
        scopes=["metering"],
        budget_period="daily",
        budget_credits="0.07",
    )

    def authorize_and_capture(i: int) -> object:
        authorization = _authorize(token, i)
        return services.authorization_capture(
            authorization=authorization,
            report=services.UsageReport(usage=pricing.Usage(output_tokens=1000)),
        ).record

    results = run_together(40, authorize_and_capture)
    charged = [r for r in results if isinstance(r, UsageRecord)]
    refused = [r for r in results if isinstance(r, TokenBudgetExceeded)]
    assert len(charged) == 7, [r for r in results if not isinstance(r, UsageRecord)][:3]
    assert len(refused) == 33
    assert all(r.detail["limit_source"] == "token_budget" for r in refused)
    locked = ApiToken.objects.get(pk=token.pk)
    assert locked.budget_spent_micro == 7 * TEN_MILLI == locked.budget_micro
    assert refresh(wallet).balance == credit_micro("1000") - 7 * TEN_MILLI
    assert_ledger_ok(wallet)


def test_concurrent_one_shot_records_never_exceed_a_budget(chat: None) -> None:
    user = UserFactory()
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "1000")
    token, _ = account_services.api_token_create(
        user=user, name="t", scopes=["metering"], budget_period="weekly", budget_credits="0.05"
    )

    def record(i: int) -> object:
        fresh = ApiToken.objects.select_related("group__tier", "membership").get(pk=token.pk)
        return services.usage_record_create_oneshot(
            token=fresh,
            model="test-chat",
            request_id=f"o{i}",
            report=services.UsageReport(usage=pricing.Usage(output_tokens=1000)),
        ).record

    results = run_together(30, record)
    assert sum(isinstance(r, UsageRecord) for r in results) == 5
    assert sum(isinstance(r, TokenBudgetExceeded) for r in results) == 25
    assert ApiToken.objects.get(pk=token.pk).budget_spent_micro == 5 * TEN_MILLI
    assert_ledger_ok(wallet)


def test_concurrent_uncapped_authorizations_never_overdraw_the_wallet(chat: None) -> None:
    """An uncapped token takes the one-call path (``usage_authorization_open``); the
    wallet's conditional update alone keeps 30 racing holds within what it has."""
    user = UserFactory()
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "0.07")  # seven holds of 0.01
    Wallet.objects.filter(pk=wallet.pk).update(min_balance_micro=0)
    token, _ = account_services.api_token_create(user=user, name="t", scopes=["metering"])
    results = run_together(30, lambda i: _authorize(token, i))
    granted = [r for r in results if isinstance(r, Authorization)]
    assert len(granted) == 7, [r for r in results if not isinstance(r, Authorization)][:3]
    assert all(isinstance(r, InsufficientCredits) for r in results if r not in granted)
    assert refresh(wallet).held == 7 * TEN_MILLI == refresh(wallet).balance
    assert Authorization.objects.count() == Hold.objects.count() == 7
    assert_ledger_ok(wallet)


def test_authorizations_and_captures_racing_on_one_pool_never_deadlock(chat: None) -> None:
    """Uncapped tokens of one organization's pool, as the metering benchmark's (b): an
    authorization references its token and member (key-share locks) and holds on the pool,
    a capture counts the charge on the token and the member and then charges the pool.
    Both must lock in one order (token, membership, wallet) with modes that let each
    other's through: a capture locking its token FOR UPDATE deadlocked here at once, and
    an authorization taking its key-share locks after the pool deadlocked now and then."""
    organization = OrganizationFactory()
    owner = organization.memberships.get().user
    pool = Wallet.objects.get(organization=organization)
    credit(pool, "1000")
    tokens = [
        account_services.api_token_create(
            user=owner, name=f"t{n}", scopes=["metering"], organization=organization
        )[0]
        for n in range(4)
    ]
    report = services.UsageReport(usage=pricing.Usage(output_tokens=300))

    def pairs(i: int) -> int:
        for n in range(30):
            authorization = _authorize(tokens[i % 4], i * 1000 + n)
            services.authorization_capture(authorization=authorization, report=report)
        return i

    results = run_together(8, pairs)
    errors = [r for r in results if not isinstance(r, int)]
    assert not errors, errors[:3]
    assert UsageRecord.objects.count() == 240
    assert refresh(pool).held == 0
    assert (
        sum(
            ApiToken.objects.filter(pk__in=[t.pk for t in tokens]).values_list(
                "used_micro", flat=True
            )
        )
        == 240 * 3_000
    )
    assert_ledger_ok(pool)
