"""Sortable unique ids (ULID layout: 48-bit millisecond time + 80 random bits, Crockford base32),
used for orders and bundle ids so a directory listing is also a timeline.

Monotonic (as the ULID spec allows): the 80 low bits are drawn once per millisecond, then
incremented for every further id in that millisecond, so ids made in one process sort in creation
order. The draw comes from a generator seeded from os.urandom at start (and again in a forked
child), not from urandom itself: a getrandom(2) per id or per millisecond is a syscall that drops
the GIL, and in bench/engine re-taking it behind busy threads cost more wall time on the source
thread than parsing the alert. Ids are unique and ordered, not secret: nothing uses them as one.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_PATTERN = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
_RANDOM_BITS = 80
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1


class _Monotonic:
    """The last (millisecond, random part) handed out; a lock keeps two threads from sharing one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = -1
        self._rand = 0
        self._random = random.Random(os.urandom(32))  # noqa: S311 - unique ids, not secrets

    @property
    def last_ms(self) -> int:
        return self._ms

    def next(self, ms: int) -> int:
        with self._lock:
            if ms > self._ms:
                self._ms = ms
                # Top bit clear: 2**79 increments fit before the random part could overflow.
                self._rand = self._random.getrandbits(_RANDOM_BITS - 1)
            else:
                # Same millisecond (or the wall clock stepped back): keep the previous time so
                # the ids stay ordered, and count up in the random part.
                self._rand = (self._rand + 1) & _RANDOM_MASK
            return (self._ms << _RANDOM_BITS) | self._rand


_GEN = _Monotonic()
# A forked child must not replay the parent's sequence.
os.register_at_fork(after_in_child=lambda: globals().__setitem__("_GEN", _Monotonic()))


#: Two base32 characters per 10 bits: 13 table lookups per id instead of 26 shifts.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def _encode(value: int) -> str:
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(120, -10, -10)])


def new_id(now: float | None = None) -> str:
    """A new id carrying ``now`` (default: the current time); monotonic within this process
    unless ``now`` is older than the last id made."""
    ms = int((time.time() if now is None else now) * 1000)
    if now is not None and ms < _GEN.last_ms:
        # A time in the past (imports, tests): its own random part, no ordering promise.
        return _encode((ms << _RANDOM_BITS) | int.from_bytes(os.urandom(10), "big"))  # rare
    return _encode(_GEN.next(ms))


def id_time(value: str) -> float:
    """Seconds since the epoch encoded in an id."""
    n = 0
    for ch in value[:10]:
        n = n * 32 + _ALPHABET.index(ch)
    return n / 1000.0


def is_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))
