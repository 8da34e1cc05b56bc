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


# What the endless stream saw: "closed" once the handler stopped it.
endless_events: list[str] = []


async def endless_stream(request: HttpRequest) -> StreamingHttpResponse:
    async def parts():  # type: ignore[no-untyped-def]
        try:
            while True:
                await asyncio.sleep(0.01)
                yield b"tick\n"
        finally:
            endless_events.append("closed")

    return StreamingHttpResponse(parts(), content_type="text/plain")


urlpatterns = [
    path("json", async_json),
    path("stream", async_stream),
    path("endless", endless_stream),
]
