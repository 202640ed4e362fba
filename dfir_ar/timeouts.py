"""The pending-undo table: which (command, key) must be undone when. Pure: no clock, no sleeping.

OSSEC and Wazuh keep this list in memory only, so a crash leaves blocks forever; here the ledger is
the durable copy and this table is rebuilt from it on start. The table only answers "what is due
at ``now``" and "when is the next deadline", so the one loop that sleeps can wake exactly on the
next deadline instead of polling on a fixed tick.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TimeoutTable(Generic[K]):
    """A min-heap of deadlines with lazy invalidation: rescheduling or cancelling is O(log n)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._deadline: dict[K, float] = {}
        self._seq = 0  # tie-breaker: keys need not be orderable

    def __len__(self) -> int:
        return len(self._deadline)

    def __contains__(self, key: object) -> bool:
        return key in self._deadline

    def deadline(self, key: K) -> float | None:
        return self._deadline.get(key)

    def schedule(self, key: K, deadline: float) -> None:
        """Set (or move, earlier or later) the deadline of ``key``."""
        self._deadline[key] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, key))
        # Stale heap items are skipped when popped; compact when they dominate so memory stays
        # proportional to live entries even under constant refreshes.
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._deadline):
            self._compact()

    def cancel(self, key: K) -> bool:
        """Forget ``key``; True if it was scheduled."""
        return self._deadline.pop(key, None) is not None

    def due(self, now: float, limit: int | None = None) -> list[K]:
        """Remove and return the keys whose deadline is <= ``now``, earliest first."""
        out: list[K] = []
        while self._heap and (limit is None or len(out) < limit):
            deadline, _, key = self._heap[0]
            if self._deadline.get(key) != deadline:
                heapq.heappop(self._heap)  # cancelled or rescheduled since this push
                continue
            if deadline > now:
                break
            heapq.heappop(self._heap)
            del self._deadline[key]
            out.append(key)
        return out

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None when nothing is pending."""
        while self._heap:
            deadline, _, key = self._heap[0]
            if self._deadline.get(key) == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None

    def _compact(self) -> None:
        self._heap = []
        for key, deadline in self._deadline.items():
            self._seq += 1
            self._heap.append((deadline, self._seq, key))
        heapq.heapify(self._heap)


def wait_seconds(now: float, next_deadline: float | None, ceiling: float) -> float:
    """How long the timeout loop may sleep: until the next deadline, at most ``ceiling``."""
    if next_deadline is None:
        return ceiling
    return max(0.0, min(ceiling, next_deadline - now))
