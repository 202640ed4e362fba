"""JSON for the engine's hot path: orjson, with the guarantees the stdlib calls gave us.

Every alert is decoded once and encoded three times (the ledger's stored request, the Wazuh
input-JSON line of active-responses.log, the audit record). With the stdlib that was ~40 us of
the engine's ~200 us per alert; orjson does the same work in ~4 us (bench/engine).

What stays as it was:

- **One record per line.** JSON escapes control characters, but the stdlib's default
  ``ensure_ascii`` also escaped U+0085, U+2028 and U+2029, which Python's ``str.splitlines``
  (and some log viewers) treat as line breaks. orjson writes them as UTF-8, so :func:`dumpb`
  escapes them again: attacker text can never split an audit or log record.
- **Anything encodes.** Values orjson refuses (a string with a lone surrogate, an integer beyond
  64 bits) fall back to the stdlib encoder with ``ensure_ascii``; unknown types become ``str()``.
- **Errors are ValueError.** ``orjson.JSONDecodeError`` subclasses ``json.JSONDecodeError``.

Not used for the evidence manifest: its bytes are signed and hashed, and stay on the stdlib's
canonical ``sort_keys`` encoding (dfir_ar.evidence.manifest).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS
_SORTED = orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS
# The UTF-8 encodings of the three non-control characters str.splitlines breaks on.
_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))

loads = orjson.loads
"""bytes or str -> object; stricter than json.loads (no NaN, no lone surrogates, depth 1024).
Raises ValueError (orjson.JSONDecodeError)."""


def dumpb(obj: Any, *, sort_keys: bool = False) -> bytes:
    """Compact JSON as UTF-8 bytes, safe to write as one line."""
    try:
        out = orjson.dumps(obj, default=str, option=_SORTED if sort_keys else _OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, separators=(",", ":"), default=str, sort_keys=sort_keys).encode()
    return line_safe(out)


def line_safe(out: bytes) -> bytes:
    """``out`` (compact JSON) with U+0085, U+2028 and U+2029 escaped: they only occur inside
    strings, where the escape means the same character."""
    if not out.isascii() and (b"\xc2\x85" in out or b"\xe2\x80" in out):
        for raw, escaped in _BREAKS:
            out = out.replace(raw, escaped)
    return out


def dumps(obj: Any, *, sort_keys: bool = False) -> str:
    """:func:`dumpb` as text."""
    return dumpb(obj, sort_keys=sort_keys).decode("utf-8")
