"""Fast validation of well-formed input on the hottest endpoints, from the DRF serializer
itself.

A DRF serializer deep-copies every declared field (nested serializers included, once per
list item) each time it validates; on the metering endpoints that costs more CPU than the
database work. ``validated(SerializerClass, data)`` instead checks the input against a
plan compiled once from the serializer's own bound fields (types, bounds, choices,
defaults) and returns the same validated data DRF would. Whenever the plan cannot be sure
— any invalid value, a null, a field kind it does not handle, a custom ``validate_<field>``
— it hands the input to the serializer, so errors, messages and exotic inputs are DRF's
own. The serializer stays the one definition (and the OpenAPI schema).

Invariant, checked by a property-based test: when the fast path returns data, the
serializer accepts the input and returns equal data.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from rest_framework import serializers
from rest_framework.fields import empty

_SKIP = object()  # the field is absent and omitted from the result


class _Unsure(Exception):
    """The fast path cannot vouch for this input: let the serializer decide."""


Check = Callable[[Any], Any]


def _int(field: serializers.IntegerField) -> Check:
    low, high = field.min_value, field.max_value

    def check(value: Any) -> Any:
        if (
            type(value) is not int
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise _Unsure
        return value

    return check


def _char(field: serializers.CharField) -> Check:
    trim, allow_blank = field.trim_whitespace, field.allow_blank
    low, high = field.min_length, field.max_length

    def check(value: Any) -> Any:
        # ASCII only: DRF also refuses NUL and surrogates; those inputs go to DRF.
        if type(value) is not str or not value.isascii() or "\x00" in value:
            raise _Unsure
        if trim:
            value = value.strip()
        if (
            (not value and not allow_blank)
            or (low is not None and len(value) < low)
            or (high is not None and len(value) > high)
        ):
            raise _Unsure
        return value

    return check


def _choice(field: serializers.ChoiceField) -> Check:
    values = dict(field.choice_strings_to_values)

    def check(value: Any) -> Any:
        if type(value) is not str or value not in values:
            raise _Unsure
        return values[value]

    return check


def _bool(value: Any) -> Any:
    if type(value) is not bool:
        raise _Unsure
    return value


def _json(field: serializers.JSONField) -> Check:
    if field.binary:
        return _never

    def check(value: Any) -> Any:
        if type(value) is not str:
            try:
                json.dumps(value, cls=field.encoder)
            except (TypeError, ValueError) as exc:
                raise _Unsure from exc
        return value

    return check


def _list(field: serializers.ListField) -> Check:
    child = _check_for(field.child)
    low, high, allow_empty = field.min_length, field.max_length, field.allow_empty

    def check(value: Any) -> Any:
        if type(value) is not list or (not value and not allow_empty):
            raise _Unsure
        if (low is not None and len(value) < low) or (high is not None and len(value) > high):
            raise _Unsure
        return [child(item) for item in value]

    return check


def _never(value: Any) -> Any:
    raise _Unsure


# Exact types only: a subclass (an EmailField is a CharField) may validate more.
_BUILDERS: dict[type, Callable[[Any], Check]] = {
    serializers.IntegerField: _int,
    serializers.CharField: _char,
    serializers.ChoiceField: _choice,
    serializers.BooleanField: lambda field: _bool,
    serializers.JSONField: _json,
    serializers.ListField: _list,
}


def _check_for(field: serializers.Field) -> Check:
    """The check of one bound field, applied to a present, non-null value. Decimal,
    date-time, dict and other fields get none: DRF handles them when present."""
    if isinstance(field, serializers.Serializer):
        return _Plan(field).check
    builder = _BUILDERS.get(type(field))
    return builder(field) if builder is not None else _never


class _Plan:
    """The compiled checks of one bound serializer (top-level or nested)."""

    def __init__(self, serializer: serializers.Serializer) -> None:
        cls = type(serializer)
        self.cls = cls
        self.fields: list[tuple[str, Check, bool, Any, bool]] = []
        for name, field in serializer.fields.items():
            if field.read_only:
                continue
            check: Check
            if field.source != name or getattr(cls, f"validate_{name}", None) is not None:
                check = _never  # renamed sources and custom field validators: DRF's job
            else:
                check = _check_for(field)
            default = _SKIP if field.default is empty else field.default
            if callable(default):
                check, default = _never, _SKIP
            self.fields.append((name, check, field.required, default, field.allow_null))
        self.custom_validate = cls.validate is not serializers.Serializer.validate

    def check(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise _Unsure
        result: dict[str, Any] = {}
        for name, check, required, default, allow_null in self.fields:
            if name not in data:
                if required:
                    raise _Unsure
                if default is not _SKIP:
                    result[name] = default
                continue
            value = data[name]
            if value is None:
                if not allow_null:
                    raise _Unsure
                result[name] = None
            else:
                result[name] = check(value)
        if self.custom_validate:
            try:
                result = self.cls(data=data).validate(result)
            except serializers.ValidationError as exc:
                raise _Unsure from exc
        return result


@functools.cache
def _plan(serializer_class: type[serializers.Serializer]) -> _Plan:
    return _Plan(serializer_class())


def fast_validate(
    serializer_class: type[serializers.Serializer], data: Any
) -> dict[str, Any] | None:
    """Validated data for well-formed input, or None when the serializer must decide."""
    try:
        return _plan(serializer_class).check(data)
    except _Unsure:
        return None


def validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    """What ``serializer_class(data=data)`` validates to; raises DRF's ValidationError
    (400, the project's error shape) when the input is not valid."""
    fast = fast_validate(serializer_class, data)
    if fast is not None:
        return fast
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
