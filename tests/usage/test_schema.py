"""Schemathesis against /api/schema/: generated requests (valid and invalid) to every
operation, with a real token so they reach the real code, never get a 5xx. Runs in-process
against the WSGI application."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.helpers import credit
from tests.usage.conftest import make_token
from usage import pricing, services
from wallet.models import Wallet

pytestmark = pytest.mark.slow

# Loaded once at collection; the schema view needs no database.
schema = schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())


@pytest.fixture(autouse=True)
def _share_the_test_connection(db: None) -> Iterator[None]:
    """Like Django's test client: the WSGI app shares the test's connection and
    transaction, so it must not close connections at the end of each request."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def token_and_secret(user, prices, settings):  # type: ignore[no-untyped-def]
    settings.API_TOKEN_RATE_LIMIT = 0
    # The model of the schema's examples, so example requests succeed.
    services.model_price_create(
        model="gpt-4o-mini", display_name="mini", provider="t", output_usd_per_mtok="0.6"
    )
    credit(Wallet.objects.get(user=user), "100")
    return make_token(user)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    # The token and catalog are meant to be shared by every generated request.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_no_server_errors(case, token_and_secret) -> None:  # type: ignore[no-untyped-def]
    token, secret = token_and_secret
    # Half of the generated ids are swapped for ones this token owns, so capture, release
    # and the record lookup run on real rows too, not only into 404s.
    params = case.path_parameters or {}
    if isinstance(params.get("authorization_id"), int) and params["authorization_id"] % 2:
        # Generated captures may report usage that spends the wallet down: refill it so
        # the authorization is covered.
        credit(Wallet.objects.get(user=token.user_id), "100")
        params["authorization_id"] = services.authorization_create(
            token=token, model="test-chat", input_tokens=10, max_tokens=10
        ).authorization.pk
    if isinstance(params.get("record_id"), int) and params["record_id"] % 2:
        params["record_id"] = services.usage_record_create_oneshot(
            token=token,
            model="test-chat",
            request_id=uuid.uuid4().hex,
            report=services.UsageReport(usage=pricing.Usage(input_tokens=10)),
        ).record.pk
    case.call_and_validate(
        headers={"Authorization": f"Bearer {secret}"}, checks=[not_a_server_error]
    )
