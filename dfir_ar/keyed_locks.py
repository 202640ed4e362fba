"""One lock per key, made on first use and dropped when nobody holds or waits for it.

The executor serialises the add, refresh and delete of one (command, key) identity. A fixed
set of striped locks would make unrelated identities share a lock, so an undo could wait out
another address's slow add (up to its deadline) and run late; a lock per identity cannot.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Generic, TypeVar

K = TypeVar("K")

# A slot is [lock, users]: users counts the threads holding or waiting for the lock. A list,
# not an object, because one is made for nearly every order on the hot path.
_LOCK, _USERS = 0, 1


class KeyedLocks(Generic[K]):
    """Mutual exclusion per key; memory stays proportional to the keys in use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._slots: dict[K, list[threading.Lock | int]] = {}

    def hold(self, key: K) -> _HeldOne[K]:
        """``with locks.hold(key):`` runs the block holding ``key``'s lock."""
        return _HeldOne(self, key)

    def hold_all(self, keys: Iterable[K]) -> _HeldAll[K]:
        """Holds every key's lock; taken in sorted order, so two holders never deadlock."""
        return _HeldAll(self, sorted(set(keys)))  # type: ignore[type-var]

    def __len__(self) -> int:
        """Keys currently held or waited for."""
        with self._guard:
            return len(self._slots)

    def _join(self, key: K) -> threading.Lock:
        """Count the caller as a user of ``key``'s slot (made if missing); its lock."""
        with self._guard:
            slot = self._slots.get(key)
            if slot is None:
                lock = threading.Lock()
                self._slots[key] = [lock, 1]
                return lock
            slot[_USERS] += 1  # type: ignore[operator]
            return slot[_LOCK]  # type: ignore[return-value]

    def _leave(self, key: K) -> None:
        with self._guard:
            slot = self._slots[key]
            if slot[_USERS] == 1:
                del self._slots[key]
            else:
                slot[_USERS] -= 1  # type: ignore[operator]


class _HeldOne(Generic[K]):
    __slots__ = ("_key", "_lock", "_owner")

    def __init__(self, owner: KeyedLocks[K], key: K) -> None:
        self._owner = owner
        self._key = key

    def __enter__(self) -> None:
        self._lock = self._owner._join(self._key)
        try:
            self._lock.acquire()
        except BaseException:
            self._owner._leave(self._key)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
        self._owner._leave(self._key)


class _HeldAll(Generic[K]):
    __slots__ = ("_keys", "_locks", "_owner")

    def __init__(self, owner: KeyedLocks[K], keys: list[K]) -> None:
        self._owner = owner
        self._keys = keys
        self._locks: list[threading.Lock] = []

    def __enter__(self) -> None:
        owner = self._owner
        joined: list[K] = []
        try:
            for key in self._keys:
                lock = owner._join(key)
                joined.append(key)
                lock.acquire()
                self._locks.append(lock)
        except BaseException:
            self._release(joined)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release(self._keys)

    def _release(self, joined: list[K]) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks = []
        for key in joined:
            self._owner._leave(key)
