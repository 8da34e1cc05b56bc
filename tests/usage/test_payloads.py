"""The hot-path payload builders render exactly what the documented serializers do."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from accounts.models import ApiToken
from tests.usage.conftest import make_token
from usage import pricing, services
from usage.api import (
    AuthorizationOutputSerializer,
    UsageRecordOutputSerializer,
    authorization_payload,
    usage_record_payload,
)
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db


def same(payload: object, serializer_data: object) -> None:
    assert JSONRenderer().render(payload) == JSONRenderer().render(serializer_data)


def test_usage_record_payload_matches_the_serializer(funded, prices) -> None:  # type: ignore[no-untyped-def]
    token, _ = make_token(funded.user)
    reports = [
        services.UsageReport(usage=pricing.Usage(input_tokens=7)),
        services.UsageReport(
            usage=pricing.Usage(1000, 300, 400, 1200, Decimal("2.5")),
            status="failed",
            error="upstream: timeout",
            latency_ms=1234,
            estimated=True,
            metadata={"tools": ["a"], "region": "eu", "extra": {"n": [1, 2]}},
            started_at=timezone.now() - dt.timedelta(seconds=3),
        ),
    ]
    for i, report in enumerate(reports):
        model = ("test-chat", "test-image")[i % 2]
        record = services.usage_record_create_oneshot(
            token=token, model=model, request_id=f"p{i}", report=report
        ).record
        for candidate in (record, UsageRecord.objects.get(pk=record.pk)):
            same(usage_record_payload(candidate), UsageRecordOutputSerializer(candidate).data)
    UsageRecord.objects.filter(pk=record.pk).update(token_group=None)
    bare = UsageRecord.objects.get(pk=record.pk)
    same(usage_record_payload(bare), UsageRecordOutputSerializer(bare).data)


def test_authorization_payload_matches_the_serializer(funded, prices) -> None:  # type: ignore[no-untyped-def]
    token, _ = make_token(funded.user)
    token = ApiToken.objects.select_related("group__tier", "membership").get(pk=token.pk)
    result = services.authorization_create(
        token=token, model="test-image", input_tokens=10, task_units=Decimal("3")
    )
    same(authorization_payload(result), AuthorizationOutputSerializer(result).data)
