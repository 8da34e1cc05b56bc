"""What a redemption code looks like, how typed input is read, and how codes are stored.

* A code is 16 characters of Crockford's base32 (digits and capitals without I, L, O, U):
  16 x 5 = 80 bits from ``secrets``, shown as ``XXXX-XXXX-XXXX-XXXX``.
* Input is read generously: case, spaces, dashes and dots are ignored, full-width forms are
  folded (NFKC), and the look-alikes O -> 0, I and L -> 1 are mapped as Crockford does.
* Only an HMAC-SHA256 of the code under ``REDEMPTION_CODE_SECRET`` is stored (plus the last
  four characters as a hint for support), so the plaintext exists only in the CSV handed
  out when a batch is generated.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence

from django.conf import settings
from django.utils.crypto import salted_hmac

from config import crockford

CODE_LENGTH = 16
GROUP_LENGTH = 4
HINT_LENGTH = 4
ENTROPY_BITS = CODE_LENGTH * crockford.BITS_PER_CHARACTER


def code_generate(choice: Callable[[Sequence[str]], str] = secrets.choice) -> str:
    """A new code, ungrouped (``code_display`` groups it)."""
    return crockford.random_string(CODE_LENGTH, choice)


def code_normalize(text: str) -> str | None:
    """The canonical form of typed input, or None if it cannot be a code."""
    code = crockford.normalize(text)
    return code if crockford.is_valid(code, CODE_LENGTH) else None


def code_display(code: str) -> str:
    return "-".join(code[i : i + GROUP_LENGTH] for i in range(0, len(code), GROUP_LENGTH))


def code_hint(code: str) -> str:
    return code[-HINT_LENGTH:]


def hint_display(hint: str) -> str:
    """How a stored code is shown to staff and to the customer who redeemed it."""
    return "-".join(["••••"] * (CODE_LENGTH // GROUP_LENGTH - 1) + [hint])


def _secrets() -> list[bytes]:
    current = settings.REDEMPTION_CODE_SECRET
    if current:
        keys = [str(current).encode()]
    else:
        keys = [salted_hmac("redemption.codes", "code-hash-key").digest()]
    keys += [str(old).encode() for old in settings.REDEMPTION_CODE_PREVIOUS_SECRETS if old]
    return keys


def code_hash(code: str) -> str:
    """The stored form of a canonical code under the current key."""
    return hmac.new(_secrets()[0], code.encode(), hashlib.sha256).hexdigest()


def code_hash_candidates(code: str) -> list[str]:
    """The code's hash under the current key and every previous one (key rotation)."""
    return [hmac.new(key, code.encode(), hashlib.sha256).hexdigest() for key in _secrets()]
