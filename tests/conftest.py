from __future__ import annotations

import pytest
from django.core.cache import cache

from accounts.models import User
from tests.factories import OrganizationFactory, UserFactory
from tests.redis_server import own_redis  # noqa: F401 (a fixture for every suite)
from wallet.models import Wallet


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    # Rate-limit counters live in the shared cache; each test starts from zero.
    cache.clear()


@pytest.fixture
def user(db: None) -> User:
    return UserFactory()


@pytest.fixture
def other_user(db: None) -> User:
    return UserFactory()


@pytest.fixture
def wallet(user: User) -> Wallet:
    return Wallet.objects.get(user=user)


@pytest.fixture
def staff(db: None) -> User:
    return UserFactory(is_staff=True)


@pytest.fixture
def organization(user: User):  # type: ignore[no-untyped-def]
    return OrganizationFactory(owner=user)


@pytest.fixture(params=["postgres-function", "python"])
def engine(request: pytest.FixtureRequest, settings) -> str:  # type: ignore[no-untyped-def]
    """Run a test on both implementations of the settle step."""
    settings.WALLET_PG_FUNCTIONS = request.param == "postgres-function"
    return str(request.param)
