"""Factories build objects through the services, so test data obeys the same invariants
as production data (every user has a wallet, every credit a lot and an entry)."""

from __future__ import annotations

from typing import Any

import factory

from accounts import services as account_services
from accounts.models import Organization, User


class UserFactory(factory.Factory):
    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = "correct-horse-battery"
    full_name = factory.Faker("name")
    country = "US"

    @classmethod
    def _create(cls, model_class: type[User], *args: Any, **kwargs: Any) -> User:
        return account_services.user_create(**kwargs)


class OrganizationFactory(factory.Factory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Team {n}")
    owner = factory.SubFactory(UserFactory)

    @classmethod
    def _create(cls, model_class: type[Organization], *args: Any, **kwargs: Any) -> Organization:
        return account_services.organization_create(**kwargs)
