"""URLs for tests of the production ASGI application with async views."""

import asyncio

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.urls import path


async def async_json(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse({"async": True})


async def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    async def parts():  # type: ignore[no-untyped-def]
        for i in range(3):
            await asyncio.sleep(0)
            yield f"part {i}\n".encode()

    return StreamingHttpResponse(parts(), content_type="text/plain")


urlpatterns = [path("json", async_json), path("stream", async_stream)]
