"""``JsonFirstNegotiation`` answers exactly as DRF's negotiation does, without parsing when
there is nothing to negotiate."""

from __future__ import annotations

import pytest
from django.http import Http404
from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from config.negotiation import JsonFirstNegotiation
from usage.api import CsvRenderer, JsonLinesRenderer

RENDERER_SETS = [
    [JSONRenderer()],
    [JSONRenderer(), CsvRenderer(), JsonLinesRenderer()],
    [CsvRenderer(), JSONRenderer()],
]
ACCEPTS = [
    None,
    "*/*",
    "application/json",
    " application/json ",
    "application/json; indent=4",
    "text/csv",
    "application/x-ndjson",
    "text/html",
    "application/*",
    "text/csv, */*;q=0.1",
]


def _choice(
    negotiation: DefaultContentNegotiation,
    request: Request,
    renderers: list[BaseRenderer],
    suffix: str | None,
) -> object:
    try:
        renderer, media_type = negotiation.select_renderer(request, renderers, suffix)
    except exceptions.NotAcceptable:
        return "406"
    except Http404:  # a format no renderer has
        return "404"
    return type(renderer).__name__, media_type


@pytest.mark.parametrize("renderers", RENDERER_SETS)
@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize(("query", "suffix"), [("", None), ("?format=jsonl", None), ("", "csv")])
def test_the_same_renderer_and_media_type_as_drf(
    renderers: list[BaseRenderer], accept: str | None, query: str, suffix: str | None
) -> None:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().get(f"/api/v1/usage{query}", **headers))
    assert _choice(JsonFirstNegotiation(), request, renderers, suffix) == _choice(
        DefaultContentNegotiation(), request, renderers, suffix
    )
