"""Crockford's base32 for codes people read and type: digits and capitals without I, L, O
and U, read back forgivingly (case, separators and the look-alikes O -> 0, I/L -> 1)."""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable, Sequence

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
BITS_PER_CHARACTER = 5

_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
# Whitespace, ASCII and Unicode dashes (U+2010..U+2015, minus), underscores and dots.
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212_.\u00b7]+")


def normalize(text: str) -> str:
    """Upper-case, separators removed, full-width forms folded (NFKC), look-alikes mapped.
    The result is not validated: check its length and ``is_valid``."""
    folded = unicodedata.normalize("NFKC", str(text or "")).upper()
    return _SEPARATORS.sub("", folded).translate(_LOOKALIKES)


def is_valid(text: str, length: int) -> bool:
    return len(text) == length and all(ch in ALPHABET for ch in text)


def random_string(length: int, choice: Callable[[Sequence[str]], str] = secrets.choice) -> str:
    """``length`` characters, each from ``choice`` (``secrets.choice`` unless a test or the
    demo passes a seeded one)."""
    return "".join(choice(ALPHABET) for _ in range(length))
