"""Sortable unique ids (ULID layout: 48-bit millisecond time + 80 random bits, Crockford base32),
used for orders and bundle ids so a directory listing is also a timeline."""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_PATTERN = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def new_id(now: float | None = None) -> str:
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def id_time(value: str) -> float:
    """Seconds since the epoch encoded in an id."""
    n = 0
    for ch in value[:10]:
        n = n * 32 + _ALPHABET.index(ch)
    return n / 1000.0


def is_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))
