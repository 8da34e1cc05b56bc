"""Redemption tests: batches are generated through the service, like the admin does."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.models import User
from redemption import services
from redemption.services import GeneratedBatch
from tests.factories import UserFactory
from tests.helpers import micro


def make_batch(**kwargs: Any) -> GeneratedBatch:
    kwargs.setdefault("name", "Spring promo")
    kwargs.setdefault("credits_micro", micro("5"))
    kwargs.setdefault("code_count", 1)
    return services.batch_generate(**kwargs)


def redeem(user: User, code: str, **kwargs: Any) -> services.RedeemResult:
    return services.code_redeem(user=user, code=code, **kwargs)


@pytest.fixture
def superuser(db: None) -> User:
    return UserFactory(is_staff=True, is_superuser=True)
