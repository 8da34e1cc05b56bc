from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from accounts import services as account_services
from accounts.models import ApiToken, Organization, User
from tests.factories import UserFactory
from tests.helpers import credit
from usage import services
from usage.models import ModelPrice, UsageRecord
from wallet.models import Wallet

ALL_SCOPES = ("inference", "metering", "read")


@pytest.fixture
def prices(db: None) -> dict[str, ModelPrice]:
    """A small catalog: a chat model with cached prices, a reasoning model, a model with a
    per-request fee, and one priced per image."""
    return {
        "chat": services.model_price_create(
            model="test-chat",
            display_name="Test Chat",
            provider="Test",
            input_usd_per_mtok="2.50",
            cached_input_usd_per_mtok="1.25",
            output_usd_per_mtok="10",
            max_output_tokens=4096,
        ),
        "reasoner": services.model_price_create(
            model="test-reasoner",
            display_name="Test Reasoner",
            provider="Test",
            input_usd_per_mtok="15",
            cached_input_usd_per_mtok="7.5",
            output_usd_per_mtok="60",
            reasoning_usd_per_mtok="60",
        ),
        "search": services.model_price_create(
            model="test-search",
            display_name="Test Search",
            provider="Test",
            input_usd_per_mtok="3",
            output_usd_per_mtok="15",
            request_usd="0.005",
        ),
        "image": services.model_price_create(
            model="test-image",
            display_name="Test Image",
            provider="Test",
            category=ModelPrice.Category.IMAGE,
            input_usd_per_mtok="5",
            unit_usd="0.04",
            unit_name="image",
        ),
    }


def make_token(
    user: User,
    *,
    scopes: tuple[str, ...] = ALL_SCOPES,
    organization: Organization | None = None,
    **kwargs: Any,
) -> tuple[ApiToken, str]:
    return account_services.api_token_create(
        user=user, name="test token", scopes=scopes, organization=organization, **kwargs
    )


class Api:
    """The test client speaking JSON with a bearer token."""

    def __init__(self, secret: str | None, client: Client | None = None) -> None:
        self.client = client or Client()
        self.headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}

    def get(self, path: str, params: dict[str, Any] | None = None, **extra: Any) -> Any:
        return self.client.get(path, params or {}, **self.headers, **extra)

    def post(self, path: str, body: Any = None, *, raw: str | None = None, **extra: Any) -> Any:
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.client.post(
            path, data, content_type="application/json", **self.headers, **extra
        )


@pytest.fixture
def funded(user: User) -> Wallet:
    wallet = Wallet.objects.get(user=user)
    credit(wallet, "100")
    return wallet


@pytest.fixture
def token_and_secret(user: User, funded: Wallet, prices: dict[str, ModelPrice]):  # type: ignore[no-untyped-def]
    return make_token(user)


@pytest.fixture
def api(token_and_secret: tuple[ApiToken, str]) -> Api:
    return Api(token_and_secret[1])


@pytest.fixture
def make_api() -> Callable[..., Api]:
    def build(secret: str | None) -> Api:
        return Api(secret)

    return build


def error_code(response: Any) -> str:
    return response.json()["error"]["code"]


def counts() -> tuple[int, int]:
    from usage.models import Authorization

    return Authorization.objects.count(), UsageRecord.objects.count()


@pytest.fixture
def org_member(organization: Organization) -> tuple[User, Organization]:
    """A plain member (not owner) of ``organization`` with a pool of 100 credits."""
    member = UserFactory()
    owner = organization.memberships.get().user
    account_services.membership_add(organization=organization, user=member, actor=owner)
    credit(Wallet.objects.get(organization=organization), "100")
    return member, organization
