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


class _Slot:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # threads holding or waiting for ``lock``


class KeyedLocks(Generic[K]):
    """Mutual exclusion per key; memory stays proportional to the keys in use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._slots: dict[K, _Slot] = {}

    def hold(self, key: K) -> _Held[K]:
        """``with locks.hold(key):`` runs the block holding ``key``'s lock."""
        return _Held(self, (key,))

    def hold_all(self, keys: Iterable[K]) -> _Held[K]:
        """Holds every key's lock; taken in sorted order, so two holders never deadlock."""
        return _Held(self, tuple(sorted(set(keys))))  # type: ignore[type-var]

    def __len__(self) -> int:
        """Keys currently held or waited for."""
        with self._guard:
            return len(self._slots)

    def _enter(self, keys: tuple[K, ...]) -> list[_Slot]:
        with self._guard:
            slots = []
            for key in keys:
                slot = self._slots.get(key)
                if slot is None:
                    slot = self._slots[key] = _Slot()
                slot.users += 1
                slots.append(slot)
        taken = 0
        try:
            for slot in slots:
                slot.lock.acquire()
                taken += 1
        except BaseException:
            for slot in slots[:taken]:
                slot.lock.release()
            self._leave(keys, slots)
            raise
        return slots

    def _exit(self, keys: tuple[K, ...], slots: list[_Slot]) -> None:
        for slot in reversed(slots):
            slot.lock.release()
        self._leave(keys, slots)

    def _leave(self, keys: tuple[K, ...], slots: list[_Slot]) -> None:
        with self._guard:
            for key, slot in zip(keys, slots, strict=True):
                slot.users -= 1
                if slot.users == 0:
                    del self._slots[key]


class _Held(Generic[K]):
    __slots__ = ("_keys", "_owner", "_slots")

    def __init__(self, owner: KeyedLocks[K], keys: tuple[K, ...]) -> None:
        self._owner = owner
        self._keys = keys
        self._slots: list[_Slot] = []

    def __enter__(self) -> None:
        self._slots = self._owner._enter(self._keys)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._exit(self._keys, self._slots)
