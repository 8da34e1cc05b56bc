"""Content negotiation without parsing when there is nothing to negotiate.

API clients send no ``Accept`` header, ``*/*`` or ``application/json``; for those, the
view's first renderer (JSON on every API view) is the answer, and DRF's negotiation, which
parses the header into media types on every request, is a measurable share of a metering
call. Anything else (another media type, a ``?format=`` override, a format suffix) is
negotiated by DRF as before, 406 included.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

_PLAIN = frozenset({"", "*/*", "application/json"})


class JsonFirstNegotiation(DefaultContentNegotiation):
    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: Any = None
    ) -> tuple[BaseRenderer, str]:
        renderers = list(renderers)
        first = renderers[0] if renderers else None
        if (
            first is not None
            and first.media_type == "application/json"
            and format_suffix is None
            and request.META.get("HTTP_ACCEPT", "").strip() in _PLAIN
            and self.settings.URL_FORMAT_OVERRIDE not in request.query_params
        ):
            return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)
