"""Pieces of the OpenAPI schema shared by every API: the error envelope."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(
        help_text="Stable machine-readable code, e.g. insufficient_credits."
    )
    message = serializers.CharField(help_text="For people.")
    detail = serializers.DictField(
        help_text="Machine-readable context, e.g. limit_source, available, requested (µcr)."
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


_MEANING = {
    400: "Invalid input (invalid_input, malformed_request, unknown_model, invalid_usage, ...).",
    401: "Missing, invalid, revoked or expired credentials (invalid_token, token_revoked, "
    "token_expired, not_authenticated).",
    402: "A cap refused the request; detail.limit_source names it.",
    403: "Not allowed: insufficient_scope, ip_not_allowed, model_not_allowed, token_required.",
    404: "Not found, or not yours.",
    409: "Conflict: idempotency_conflict, or the authorization was already settled.",
    429: "Too many requests for this token (rate_limited); see Retry-After.",
}


def error_responses(*statuses: int) -> dict[int, Any]:
    """``responses=`` entries for the error statuses an endpoint can return."""
    return {
        status: OpenApiResponse(response=ErrorSerializer, description=_MEANING[status])
        for status in statuses
    }
