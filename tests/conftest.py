from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import current_app
from django.core.cache import cache

from accounts.models import User
from config.celery import app as celery_app
from tests.factories import OrganizationFactory, UserFactory
from tests.redis_server import own_redis  # noqa: F401 (a fixture for every suite)
from wallet.models import Wallet


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    # Rate-limit counters live in the shared cache; each test starts from zero.
    cache.clear()


@pytest.fixture(autouse=True)
def _celery_app_unchanged() -> Iterator[None]:
    """Tasks run eagerly through the project's Celery app; a test that makes another app
    current would silently send every later test's tasks to a broker. Fail that test."""
    yield
    assert current_app._get_current_object() is celery_app, "a test changed Celery's app"


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
