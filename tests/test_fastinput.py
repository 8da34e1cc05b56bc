"""The fast validation path never accepts what the serializer would refuse, and returns
exactly the serializer's validated data when it answers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework import serializers

from config.fastinput import fast_validate, validated
from usage.api import AuthorizationCreateApi, UsageCollectionApi, UsageInputSerializer

HOT = [
    AuthorizationCreateApi.InputSerializer,
    UsageInputSerializer,
    UsageCollectionApi.InputSerializer,
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, 1, -1, 10_000_000, 10_000_001, 86_400_000, 86_400_001, 2**31]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        ["", " ", "12", "1.0", "true", "succeeded", "failed", "x\x00", " gpt ", "\ud800"]
    ),
    st.decimals(allow_nan=False, allow_infinity=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system", ""]), "content": values}),
        st.dictionaries(st.sampled_from(["role", "content", "name"]), values, max_size=3),
        values,
    ),
    max_size=4,
)
metadata = st.one_of(
    values,
    st.fixed_dictionaries(
        {},
        optional={
            "retries": values,
            "iterations": values,
            "region": values,
            "tools": st.one_of(values, st.lists(st.text(max_size=5), max_size=3)),
            "extra": values,
        },
    ),
)
# Plausible values exercise the accept branch; mixing in anything exercises the rest.
words = st.text(alphabet="abcxyz-. ", min_size=1, max_size=12)
counts = st.integers(0, 1000)
PLAUSIBLE = {
    "model": st.one_of(st.sampled_from(["test-chat", "gpt-4o"]), words),
    "messages": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": words}),
        max_size=3,
    ),
    "prompt": words,
    "request_id": words,
    "endpoint": words,
    "ttl_seconds": st.integers(0, 100_000),
    "input_tokens": counts,
    "cached_input_tokens": counts,
    "output_tokens": counts,
    "reasoning_tokens": counts,
    "max_tokens": counts,
    "status": st.sampled_from(["succeeded", "failed", "cancelled"]),
    "error": words,
    "latency_ms": counts,
    "estimated": st.booleans(),
    "metadata": st.fixed_dictionaries(
        {}, optional={"retries": st.integers(0, 5), "region": words, "tools": st.lists(words)}
    ),
}
MIXED = {
    **{name: st.one_of(strategy, values) for name, strategy in PLAUSIBLE.items()},
    "messages": st.one_of(PLAUSIBLE["messages"], messages, values),
    "metadata": st.one_of(PLAUSIBLE["metadata"], metadata),
    "task_units": values,
    "started_at": values,
    "finished_at": values,
}
payloads = st.one_of(
    st.fixed_dictionaries({}, optional=PLAUSIBLE),
    st.fixed_dictionaries({}, optional=MIXED),
    values,
)


@pytest.mark.parametrize("serializer_class", HOT, ids=lambda c: c.__qualname__)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=payloads)
def test_the_fast_path_agrees_with_the_serializer(
    serializer_class: type[serializers.Serializer], data: Any
) -> None:
    fast = fast_validate(serializer_class, data)
    event("fast path answered" if fast is not None else "left to the serializer")
    if fast is None:
        return
    serializer = serializer_class(data=data)
    assert serializer.is_valid(), (data, fast, serializer.errors)
    assert fast == serializer.validated_data


@pytest.mark.parametrize(
    ("serializer_class", "data"),
    [
        (
            AuthorizationCreateApi.InputSerializer,
            {
                "model": "m",
                "messages": [{"role": "user", "content": "hi " * 200}],
                "max_tokens": 50,
            },
        ),
        (
            AuthorizationCreateApi.InputSerializer,
            {"model": "m", "prompt": "hello", "input_tokens": 3},
        ),
        (
            UsageInputSerializer,
            {
                "input_tokens": 120,
                "cached_input_tokens": 40,
                "output_tokens": 180,
                "latency_ms": 700,
                "metadata": {"retries": 0, "region": "us-east"},
            },
        ),
        (UsageCollectionApi.InputSerializer, {"model": "m", "input_tokens": 5, "status": "failed"}),
    ],
)
def test_well_formed_requests_take_the_fast_path(
    serializer_class: type[serializers.Serializer], data: dict[str, Any]
) -> None:
    fast = fast_validate(serializer_class, data)
    assert fast is not None
    serializer = serializer_class(data=data)
    assert serializer.is_valid()
    assert fast == serializer.validated_data


def test_fields_it_does_not_check_go_to_the_serializer() -> None:
    class Sample(serializers.Serializer):
        email = serializers.EmailField(required=False)
        amount = serializers.DecimalField(max_digits=5, decimal_places=2, default=Decimal(0))
        when = serializers.DateTimeField(required=False)

    assert fast_validate(Sample, {}) == {"amount": Decimal(0)}
    assert fast_validate(Sample, {"email": "a@b.co"}) is None  # EmailField is not CharField
    assert fast_validate(Sample, {"amount": "1.50"}) is None
    assert fast_validate(Sample, {"when": "2030-01-01T00:00Z"}) is None
    assert validated(Sample, {"amount": "1.5"})["amount"] == Decimal("1.50")
    with pytest.raises(serializers.ValidationError):
        validated(Sample, {"email": "not-an-email"})
