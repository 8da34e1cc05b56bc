"""Upstream channels of the OpenAI-compatible gateway: the writes (staff, through the admin)
and the one read the gateway makes per request.

An API key is write-only: it is stored sealed (``usage.keybox``) to be sent upstream, but
never displayed again (only its last four characters, ``api_key_hint``) and never logged;
``Channel.__repr__`` hides it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config.errors import ValidationFailed
from usage import keybox
from usage.models import UpstreamChannel

logger = logging.getLogger(__name__)


class InvalidChannel(ValidationFailed):
    code = "invalid_channel"
    default_message = "The upstream channel is not valid."


@dataclass(frozen=True)
class Channel:
    """What the gateway needs of a channel, detached from the ORM (it crosses to the event
    loop)."""

    name: str
    base_url: str
    api_key: str = field(repr=False)
    model_map: dict[str, str] = field(default_factory=dict)

    def upstream_model(self, model: str) -> str:
        return self.model_map.get(model, model)

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


def channel_base_url_clean(value: str) -> str:
    url = (value or "").strip()
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidChannel("The base URL must be an http(s) URL.", field="base_url")
    return url.rstrip("/")


def channel_model_map_clean(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k.strip() and v.strip()
        for k, v in value.items()
    ):
        raise InvalidChannel(
            "The model mapping must be a JSON object of model id to upstream model id.",
            field="model_map",
        )
    return {k.strip(): v.strip() for k, v in value.items()}


def upstream_channel_save(
    *, channel: UpstreamChannel, api_key: str | None = None
) -> UpstreamChannel:
    """Validate and save ``channel``. ``api_key`` replaces the stored key when given (None
    or "" keeps it); only its last four characters are kept for display."""
    channel.name = (channel.name or "").strip()
    if not channel.name:
        raise InvalidChannel("A channel needs a name.", field="name")
    channel.base_url = channel_base_url_clean(channel.base_url)
    channel.model_map = channel_model_map_clean(channel.model_map)
    if api_key:
        key = api_key.strip()
        channel.api_key = keybox.seal(key)
        channel.api_key_hint = key[-4:] if len(key) >= 8 else ""
    channel.updated_at = timezone.now()
    channel.save()
    global _cache
    _cache = None  # this process sees the change at once; the others within the TTL
    return channel


_cache: tuple[float, list[Channel]] | None = None


def channel_list_for_gateway() -> list[Channel]:
    """The channels to try, in order: the enabled ones by priority, or, with none enabled,
    the default channel from ``UPSTREAM_BASE_URL`` / ``UPSTREAM_API_KEY``.

    Kept for ``GATEWAY_CHANNEL_CACHE_SECONDS`` in each process (a query less per call):
    an edit in the admin reaches every process within that time."""
    global _cache
    ttl = settings.GATEWAY_CHANNEL_CACHE_SECONDS
    now = time.monotonic()
    if ttl > 0 and _cache is not None and now - _cache[0] < ttl:
        return _cache[1]
    channels = _channel_list()
    _cache = (now, channels)
    return channels


def _channel_list() -> list[Channel]:
    rows = list(
        UpstreamChannel.objects.filter(enabled=True).values_list(
            "name", "base_url", "api_key", "model_map"
        )
    )
    if not rows:
        return [Channel("default", settings.UPSTREAM_BASE_URL, settings.UPSTREAM_API_KEY)]
    channels = []
    for name, url, stored, mapping in rows:
        try:
            key = keybox.unseal(stored)
        except keybox.KeyUnreadable as exc:
            # Skipped, not sent keyless; with no channel left, calls get 503.
            logger.error("upstream channel %s skipped: %s", name, exc)
            continue
        channels.append(Channel(name, url, key, dict(mapping or {})))
    return channels


def upstream_keys_reseal() -> int:
    """Seal every stored key under the current ``UPSTREAM_KEY_SECRET`` (after a rotation;
    keys already under it are re-sealed too). All or nothing: a key no configured secret
    opens raises ``KeyUnreadable`` naming its channel, and nothing is changed. Returns the
    number of keys re-sealed."""
    global _cache
    count = 0
    with transaction.atomic():
        for channel in UpstreamChannel.objects.select_for_update().exclude(api_key=""):
            try:
                resealed = keybox.reseal(channel.api_key)
            except keybox.KeyUnreadable as exc:
                raise keybox.KeyUnreadable(f"channel {channel.name}: {exc}") from None
            UpstreamChannel.objects.filter(pk=channel.pk).update(api_key=resealed)
            count += 1
    _cache = None
    return count
