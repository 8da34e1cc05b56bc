"""The shape of API token secrets: ``sk-live-<prefix>-<secret>``.

* ``prefix``: 12 lowercase hex characters, public, UNIQUE, the index the token is found by.
* ``secret``: 43 characters of base62 (about 256 bits from ``secrets``), never stored.
* Only the SHA-256 of the whole string is stored. The secret has far more entropy than any
  password, so a fast hash is the right one (as for GitHub and Stripe keys): it cannot be
  brute-forced, and a salt or a slow hash would add nothing but latency to every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

PREFIX_CHARS = 12
SECRET_CHARS = 43
_ALPHABET = string.ascii_letters + string.digits
_HEX = frozenset("0123456789abcdef")
_HEAD = "sk-live-"


@dataclass(frozen=True)
class Secret:
    prefix: str
    full: str

    @property
    def hash(self) -> str:
        return hash_secret(self.full)


def new_prefix() -> str:
    return secrets.token_hex(PREFIX_CHARS // 2)


def new_secret(prefix: str | None = None) -> Secret:
    prefix = prefix or new_prefix()
    body = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_CHARS))
    return Secret(prefix=prefix, full=f"{_HEAD}{prefix}-{body}")


def hash_secret(full: str) -> str:
    return hashlib.sha256(full.encode("utf-8")).hexdigest()


def parse_prefix(full: str) -> str | None:
    """The prefix of a well-formed secret, or None (without touching the database)."""
    if not full.startswith(_HEAD) or len(full) != len(_HEAD) + PREFIX_CHARS + 1 + SECRET_CHARS:
        return None
    prefix, dash, body = full[len(_HEAD) :].partition("-")
    if dash != "-" or len(prefix) != PREFIX_CHARS or not set(prefix) <= _HEX:
        return None
    if len(body) != SECRET_CHARS or not body.isalnum() or not body.isascii():
        return None
    return prefix


def secret_matches(full: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(full), stored_hash)
