"""Upstream API keys at rest: sealed with Fernet (AES-128-CBC with an HMAC-SHA256, from
the ``cryptography`` package) under ``UPSTREAM_KEY_SECRET``, so a copy of the database
does not hand out the platform's provider keys.

A stored key is ``fernet:<token>``. Sealing uses the current secret; opening tries it and
then each of ``UPSTREAM_KEY_PREVIOUS_SECRETS``, so a secret can be rotated: put the new one
first, list the old one as previous, run ``manage.py upstream_keys_reseal``, then drop the
old one. Each secret is stretched into a Fernet key with SHA-256 (any long random string
will do); an empty current secret derives one from ``DJANGO_SECRET_KEY`` (local use only:
production requires its own).
"""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

PREFIX = "fernet:"


class KeyUnreadable(Exception):
    """A stored key that none of the configured secrets opens."""


def _fernet_key(secret: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(f"upstream-key:{secret}".encode()).digest())


@functools.lru_cache(maxsize=4)
def _box(secrets: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(_fernet_key(secret)) for secret in secrets])


def _current() -> MultiFernet:
    current = settings.UPSTREAM_KEY_SECRET or f"derived:{settings.SECRET_KEY}"
    return _box((current, *settings.UPSTREAM_KEY_PREVIOUS_SECRETS))


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def seal(key: str) -> str:
    """The form to store ``key`` in ("" stays "": no key)."""
    if not key:
        return ""
    return PREFIX + _current().encrypt(key.encode()).decode("ascii")


def unseal(stored: str) -> str:
    """The key a stored value holds. A value stored before keys were sealed is returned
    as it is (the migration that introduced sealing sealed every stored key)."""
    if not is_sealed(stored):
        return stored
    try:
        return _current().decrypt(stored[len(PREFIX) :].encode("ascii")).decode()
    except InvalidToken:
        raise KeyUnreadable(
            "This upstream key was sealed under a secret that is not configured "
            "(UPSTREAM_KEY_SECRET / UPSTREAM_KEY_PREVIOUS_SECRETS)."
        ) from None


def reseal(stored: str) -> str:
    """``stored`` sealed under the current secret (after a rotation); ``KeyUnreadable``
    if no configured secret opens it."""
    return seal(unseal(stored))
