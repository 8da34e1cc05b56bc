from __future__ import annotations

import importlib

import pytest
from django.apps import apps as django_apps
from django.test import Client

from accounts.models import User
from tests.usage.conftest import funded, make_token, prices  # noqa: F401


@pytest.fixture(autouse=True)
def _catalogue(db: None) -> None:
    """The default top-up packages and bonus rules (transactional tests flush them)."""
    migration = importlib.import_module("billing.migrations.0002_default_packages_and_bonus_rules")
    migration.create_defaults(django_apps, None)


def browser(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


__all__ = ["browser", "make_token"]
