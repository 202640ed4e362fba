"""The contract between alert sources and the engine (seam A).

A source calls ``handle(item, cursor)`` once per alert or refused record, from one thread at a
time, with the cursor positioned just AFTER that record. The handler persists the cursor in the
same SQLite transaction as the intents the alert produced, so a ``kill -9`` neither loses nor
repeats an alert; on start the source resumes from ``cursor_store.load(name)``. An exception
raised by the handler stops the source (it propagates out of ``run``): an alert the engine could
not record must not be skipped silently.

A handler may also offer ``many(items, cursor)`` (:class:`BatchHandler`): the records of one read,
in order, with the cursor just after the last; it records all of them and the cursor at once, or
raises. The file tail uses it when the handler has it: one hand-off per read instead of one per
alert is most of what lets serve keep up with a burst.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dfir_ar.alert import Alert


@dataclass(frozen=True)
class Cursor:
    source: str
    """The source's name (``file:/var/ossec/logs/alerts/alerts.json``)."""
    position: str
    """Opaque, JSON-able text the source understands (a file tail: ``v1:<dev>:<inode>:<offset>``)."""


class CursorStore(Protocol):
    def load(self, source: str) -> Cursor | None: ...


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that did not parse as an alert; counted and logged by the handler."""

    reason: str
    excerpt: str
    """A short, escaped rendering of the record (safe to log)."""


Handler = Callable[[Alert | Rejected, Cursor | None], None]


class BatchHandler(Protocol):
    def __call__(self, item: Alert | Rejected, cursor: Cursor | None) -> None: ...

    def many(self, items: Sequence[Alert | Rejected], cursor: Cursor | None) -> None: ...


class AlertSource(Protocol):
    name: str

    def run(self, handle: Handler, stop: threading.Event) -> None:
        """Deliver alerts until ``stop`` is set (or a finite input ends)."""
        ...


class MemoryCursorStore:
    """A CursorStore in a dict (``simulate``, tests); the engine's is the SQLite ledger."""

    def __init__(self) -> None:
        self.cursors: dict[str, Cursor] = {}

    def load(self, source: str) -> Cursor | None:
        return self.cursors.get(source)

    def save(self, cursor: Cursor) -> None:
        self.cursors[cursor.source] = cursor
