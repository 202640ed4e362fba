"""One lock per key, present only while it is held.

The executor serialises the add, refresh and delete of one (command, key) identity. A fixed
set of striped locks would make unrelated identities share a lock, so an undo could wait out
another address's slow add (up to its deadline) and run late; a lock per identity cannot.

No guard lock: a shared one made the executor's worker threads queue on it (bench/engine lost a
quarter of its rate). The map is changed only by ``dict.setdefault`` and by the holder removing
its own entry, both atomic on a dict keyed by tuples of str. The holder of a key is whoever holds
the lock the map names for it, so the holder removes the entry and then releases; a waiter that
wakes on a lock no longer named retries with the current one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Generic, TypeVar

K = TypeVar("K")


class KeyedLocks(Generic[K]):
    """Mutual exclusion per key; memory stays proportional to the keys held."""

    def __init__(self) -> None:
        self._held: dict[K, threading.Lock] = {}

    def hold(self, key: K) -> _HeldOne[K]:
        """``with locks.hold(key):`` runs the block holding ``key``."""
        return _HeldOne(self, key)

    def hold_all(self, keys: Iterable[K]) -> _Held[K]:
        """Holds every key; taken in sorted order, so two holders never deadlock."""
        return _Held(self, tuple(sorted(set(keys))))  # type: ignore[type-var]

    def __len__(self) -> int:
        """Keys currently held."""
        return len(self._held)

    def _acquire(self, key: K) -> threading.Lock:
        held = self._held
        while True:
            lock = held.get(key)
            if lock is None:
                lock = held.setdefault(key, threading.Lock())
            lock.acquire()
            if held.get(key) is lock:
                return lock
            lock.release()  # its holder retired it while we waited: take the current one

    def _release(self, key: K, lock: threading.Lock) -> None:
        del self._held[key]
        lock.release()


class _HeldOne(Generic[K]):
    """``hold`` of one key: once per order on the hot path, so no lists."""

    __slots__ = ("_key", "_lock", "_owner")

    def __init__(self, owner: KeyedLocks[K], key: K) -> None:
        self._owner = owner
        self._key = key

    def __enter__(self) -> None:
        self._lock = self._owner._acquire(self._key)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._release(self._key, self._lock)


class _Held(Generic[K]):
    __slots__ = ("_keys", "_locks", "_owner")

    def __init__(self, owner: KeyedLocks[K], keys: tuple[K, ...]) -> None:
        self._owner = owner
        self._keys = keys
        self._locks: list[threading.Lock] = []

    def __enter__(self) -> None:
        try:
            for key in self._keys:
                self._locks.append(self._owner._acquire(key))
        except BaseException:
            self._release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        for key, lock in reversed(list(zip(self._keys, self._locks, strict=False))):
            self._owner._release(key, lock)
        self._locks = []
