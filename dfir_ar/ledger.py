"""The durable record of every stateful response: SQLite in WAL mode under ``global.state_dir``.

Why a ledger at all: OSSEC and Wazuh keep pending undos in memory, so a crash leaves blocks in
place forever and a restart runs every undo early. Here:

* the *intent* row is written before the action and marked ``applied`` after it, so a crash in
  between is visible on the next start (see ``dfir_ar.executor.Executor.reconcile``);
* a source's cursor is stored in the SAME transaction as the intents its alert produced, so a
  ``kill -9`` neither loses an alert (cursor not moved without its intents) nor repeats one
  (intents not written without the cursor);
* repeat-offender counters live apart from the entries, so they survive the undo and decay after
  ``global.offender_window`` instead of never (Wazuh #15171).

One writer connection behind a lock; readers (``dfir-ar blocks list``) open their own read-only
connection. Rows read back are re-validated before use: the file is state, not trusted input.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dfir_ar import codec
from dfir_ar.alert import Alert
from dfir_ar.errors import RefusedInput, StateError
from dfir_ar.evidence.private import make_private_dirs
from dfir_ar.ids import is_id
from dfir_ar.responder import Request, State, Target
from dfir_ar.validate import parse_ip, parse_username

if TYPE_CHECKING:
    from dfir_ar.sources.base import Cursor

log = logging.getLogger("dfir_ar.ledger")
T = TypeVar("T")

LEDGER_FILE = "ledger.sqlite3"
SCHEMA_VERSION = 1
INTENT = "intent"
APPLIED = "applied"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    command TEXT NOT NULL,
    key TEXT NOT NULL,
    order_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT,
    status TEXT NOT NULL CHECK (status IN ('intent', 'applied')),
    created_at REAL NOT NULL,
    applied_at REAL,
    expires_at REAL,
    offences INTEGER NOT NULL,
    last_offence REAL NOT NULL,
    PRIMARY KEY (command, key)
);
CREATE INDEX IF NOT EXISTS entries_order ON entries (order_id);
CREATE TABLE IF NOT EXISTS offenders (
    command TEXT NOT NULL,
    key TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_offence REAL NOT NULL,
    PRIMARY KEY (command, key)
);
CREATE TABLE IF NOT EXISTS jobs (
    order_id TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    source TEXT PRIMARY KEY,
    position TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


# ---------------------------------------------------------------------------------------------
# Request <-> JSON. Decoding re-validates: a hand-edited or corrupted row must not reach an argv.

# The alert's identifying fields, not the whole raw alert: the row stays small on the hot path,
# and scripts that need the exact alert on delete (Wazuh protocol) keep their add message in the
# responder state.
_ALERT_FIELDS = (
    "rule_id", "level", "groups", "id", "timestamp", "description", "agent_id", "agent_name",
    "agent_ip", "srcip", "srcuser", "dstuser", "filename", "location",
)


def alert_to_dict(alert: Alert) -> dict[str, Any]:
    # Spelled out (the _ALERT_FIELDS keys, in order), not a getattr loop: once per alert.
    return {
        "rule_id": alert.rule_id, "level": alert.level, "groups": list(alert.groups),
        "id": alert.id, "timestamp": alert.timestamp, "description": alert.description,
        "agent_id": alert.agent_id, "agent_name": alert.agent_name, "agent_ip": alert.agent_ip,
        "srcip": alert.srcip, "srcuser": alert.srcuser, "dstuser": alert.dstuser,
        "filename": alert.filename, "location": alert.location,
    }


def alert_from_dict(data: Mapping[str, Any]) -> Alert:
    try:
        fields: dict[str, Any] = {n: data[n] for n in _ALERT_FIELDS if n in data}
        fields["groups"] = tuple(str(g) for g in data.get("groups", ()))
        fields["rule_id"] = int(data["rule_id"])
        fields["level"] = int(data["level"])
        raw = data.get("raw") or {}
        if not isinstance(raw, dict):
            raise TypeError("raw is not an object")
        return Alert(**fields, raw=raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"ledger: stored alert is malformed: {exc}") from None


def target_to_dict(target: Target) -> dict[str, str | None]:
    return {
        "srcip": None if target.srcip is None else str(target.srcip),
        "username": target.username,
        "filename": target.filename,
    }


def target_from_dict(data: Mapping[str, Any]) -> Target:
    srcip = data.get("srcip")
    username = data.get("username")
    filename = data.get("filename")
    if filename is not None and (
        not isinstance(filename, str) or "\x00" in filename or len(filename) > 4096
    ):
        raise StateError("ledger: stored filename is not a NUL-free string")
    return Target(
        srcip=None if srcip is None else parse_ip(srcip),
        username=None if username is None else parse_username(username),
        filename=filename,
    )


def encode_request(request: Request) -> str:
    return codec.dumps(
        {
            "command": request.command,
            "target": target_to_dict(request.target),
            "order_id": request.order_id,
            "timeout": request.timeout,
            "extra_args": list(request.extra_args),
            "alert": None if request.alert is None else alert_to_dict(request.alert),
        }
    )


def decode_request(text: str) -> Request:
    """Parse a stored request and validate every field again (StateError on failure)."""
    try:
        data = codec.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        extra = data.get("extra_args") or []
        if not isinstance(extra, list) or not all(
            isinstance(a, str) and "\x00" not in a for a in extra
        ):
            raise TypeError("extra_args is not a list of strings")
        timeout = data.get("timeout")
        alert = data.get("alert")
        command = data["command"]
        order_id = data.get("order_id", "")
        if not isinstance(command, str) or not isinstance(order_id, str):
            raise TypeError("command/order_id are not strings")
        if order_id and not is_id(order_id):
            raise TypeError(f"order id {order_id!r} is not an id")
        return Request(
            command=command,
            target=target_from_dict(data.get("target") or {}),
            order_id=order_id,
            timeout=None if timeout is None else float(timeout),
            extra_args=tuple(extra),
            alert=None if alert is None else alert_from_dict(alert),
        )
    except RefusedInput as exc:
        raise StateError(f"ledger: stored request failed validation: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"ledger: stored request is malformed: {exc}") from None


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of the ledger: a stateful response that is (or is about to be) in place."""

    command: str
    key: str
    order_id: str
    agent_id: str
    request_json: str
    state: State | None
    status: str
    created_at: float
    applied_at: float | None
    expires_at: float | None
    offences: int
    last_offence: float

    @property
    def ident(self) -> tuple[str, str]:
        return (self.command, self.key)

    def request(self) -> Request:
        return decode_request(self.request_json)

    def remaining(self, now: float) -> float | None:
        return None if self.expires_at is None else max(0.0, self.expires_at - now)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "command": self.command,
            "key": self.key,
            "agent": self.agent_id,
            "order_id": self.order_id,
            "status": self.status,
            "since": self.applied_at or self.created_at,
            "expires_at": self.expires_at,
            "expires_in": self.remaining(now),
            "offences": self.offences,
            "last_offence": self.last_offence,
        }


@dataclass(frozen=True, slots=True)
class Job:
    """A one-shot execution (a collection) accepted but not finished yet."""

    order_id: str
    command: str
    request_json: str
    created_at: float


_SELECT_ENTRIES = (
    "SELECT command, key, order_id, agent_id, request, state, status, created_at, applied_at, "
    "expires_at, offences, last_offence FROM entries"
)


def _entry(row: tuple[Any, ...]) -> Entry:
    state_text = row[5]
    try:
        state = None if state_text is None else codec.loads(state_text)
    except ValueError:
        raise StateError(f"ledger: state of {row[0]}/{row[1]} is not JSON") from None
    if state is not None and not isinstance(state, dict):
        raise StateError(f"ledger: state of {row[0]}/{row[1]} is not an object")
    return Entry(
        command=str(row[0]),
        key=str(row[1]),
        order_id=str(row[2]),
        agent_id=str(row[3]),
        request_json=str(row[4]),
        state=state,
        status=str(row[6]),
        created_at=float(row[7]),
        applied_at=None if row[8] is None else float(row[8]),
        expires_at=None if row[9] is None else float(row[9]),
        offences=int(row[10]),
        last_offence=float(row[11]),
    )


@functools.lru_cache(maxsize=16)
def _insert_entries_sql(rows: int) -> str:
    """INSERT of ``rows`` entries: only "?" placeholders are joined, never a value."""
    placeholders = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * rows)
    return (
        "INSERT INTO entries (command, key, order_id, agent_id, request, state, status, "  # noqa: S608 - placeholders only
        f"created_at, applied_at, expires_at, offences, last_offence) VALUES {placeholders}"
    )


class Tx:
    """The operations allowed inside one write transaction (see Ledger.transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn
        self._cursors: dict[str, tuple[str, float]] = {}
        # New intents of this transaction, written in ONE statement when it ends (or before any
        # other statement): every sqlite3 statement step releases and re-takes the GIL, which
        # behind a busy source thread costs far more than the insert (bench/engine).
        self._intents: dict[tuple[str, str], list[Any]] = {}
        # lookup() answers read ahead by prefetch(); a write to a row drops its answer.
        self._known: dict[tuple[str, str], tuple[Entry | None, int, float | None]] = {}

    def prefetch(self, pairs: list[tuple[str, str]]) -> None:
        """Read the entries and offender counters of many (command, key) in one statement, so
        the lookups of a batch cost no statement each. Only hits come back as rows (a row is a
        statement step, and a step releases the GIL); the others are known misses."""
        wanted = [p for p in dict.fromkeys(pairs) if p not in self._known and p not in self._intents]
        if not wanted:
            return
        rows = self._c.execute(
            "WITH q(c, k) AS (SELECT value ->> 0, value ->> 1 FROM json_each(?)) "
            "SELECT q.c, q.k, e.command, e.key, e.order_id, e.agent_id, e.request, e.state, "
            "e.status, e.created_at, e.applied_at, e.expires_at, e.offences, e.last_offence, "
            "o.count, o.last_offence FROM q "
            "LEFT JOIN entries AS e ON e.command = q.c AND e.key = q.k "
            "LEFT JOIN offenders AS o ON o.command = q.c AND o.key = q.k "
            "WHERE e.command IS NOT NULL OR o.command IS NOT NULL",
            (codec.dumps(wanted),),
        ).fetchall()
        known = self._known
        for pair in wanted:
            known[pair] = (None, 0, None)
        for row in rows:
            known[(row[0], row[1])] = (
                None if row[2] is None else _entry(row[2:14]),
                0 if row[14] is None else int(row[14]),
                None if row[15] is None else float(row[15]),
            )

    #: Rows per multi-row INSERT (12 parameters each; SQLite allows 32766 since 3.32).
    INSERT_ROWS = 128

    def _flush_intents(self) -> None:
        if not self._intents:
            return
        rows = list(self._intents.values())
        self._intents = {}
        # A multi-row VALUES statement: one statement step for many rows, and unlike a JSON
        # payload, no escaping of the request JSON inside another JSON text.
        for start in range(0, len(rows), self.INSERT_ROWS):
            part = rows[start:start + self.INSERT_ROWS]
            self._c.execute(_insert_entries_sql(len(part)), [v for row in part for v in row])

    def mark_applied(
        self, command: str, key: str, order_id: str, state: State, applied_at: float
    ) -> None:
        self._flush_intents()
        self._known.pop((command, key), None)
        self._c.execute(
            "UPDATE entries SET status = ?, state = ?, applied_at = ? "
            "WHERE command = ? AND key = ? AND order_id = ?",
            (APPLIED, codec.dumps(state), applied_at,
             command, key, order_id),
        )

    def mark_applied_many(self, rows: list[tuple[str, str, str, State, float]]) -> None:
        """``mark_applied`` for many (command, key, order_id, state, applied_at): one statement
        (one GIL release, see _flush_intents)."""
        self._flush_intents()
        for row in rows:
            self._known.pop((row[0], row[1]), None)
        payload = [
            [command, key, order_id, codec.dumps(state), applied_at]
            for command, key, order_id, state, applied_at in rows
        ]
        self._c.execute(
            "UPDATE entries SET status = ?, state = u.state, applied_at = u.applied_at "
            "FROM (SELECT value ->> 0 AS command, value ->> 1 AS key, value ->> 2 AS order_id, "
            "value ->> 3 AS state, value ->> 4 AS applied_at FROM json_each(?)) AS u "
            "WHERE entries.command = u.command AND entries.key = u.key "
            "AND entries.order_id = u.order_id",
            (APPLIED, codec.dumps(payload)),
        )

    def lookup(self, command: str, key: str) -> tuple[Entry | None, int, float | None]:
        """The entry for (command, key) and its stored offender counter, in one query (the hot
        path: every statement is a GIL release and re-acquire)."""
        pending = self._intents.get((command, key))
        if pending is not None:
            queued = _entry(tuple(pending))
            return queued, queued.offences, queued.last_offence
        known = self._known.get((command, key))
        if known is not None:
            return known
        row = self._c.execute(
            "SELECT e.command, e.key, e.order_id, e.agent_id, e.request, e.state, e.status, "
            "e.created_at, e.applied_at, e.expires_at, e.offences, e.last_offence, "
            "o.count, o.last_offence "
            "FROM (SELECT ? AS c, ? AS k) AS q "
            "LEFT JOIN entries AS e ON e.command = q.c AND e.key = q.k "
            "LEFT JOIN offenders AS o ON o.command = q.c AND o.key = q.k",
            (command, key),
        ).fetchone()
        entry = None if row[0] is None else _entry(row[:12])
        count = 0 if row[12] is None else int(row[12])
        last = None if row[13] is None else float(row[13])
        return entry, count, last

    def offender(self, command: str, key: str) -> tuple[int, float | None]:
        row = self._c.execute(
            "SELECT count, last_offence FROM offenders WHERE command = ? AND key = ?",
            (command, key),
        ).fetchone()
        return (0, None) if row is None else (int(row[0]), float(row[1]))

    def set_offender(self, command: str, key: str, count: int, now: float) -> None:
        self._known.pop((command, key), None)
        self._c.execute(
            "INSERT INTO offenders (command, key, count, last_offence) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (command, key) DO UPDATE SET count = excluded.count, "
            "last_offence = excluded.last_offence",
            (command, key, count, now),
        )

    def insert_intent(
        self,
        *,
        command: str,
        key: str,
        order_id: str,
        agent_id: str,
        request: Request,
        now: float,
        expires_at: float | None,
        offences: int,
    ) -> None:
        if (command, key) in self._intents:
            raise StateError(f"ledger: {command}/{key} has an intent in this transaction already")
        # Written by _flush_intents; the list is in the entries column order.
        self._intents[(command, key)] = [
            command, key, order_id, agent_id, encode_request(request), None, INTENT, now, None,
            expires_at, offences, now,
        ]

    def refresh(
        self, command: str, key: str, *, expires_at: float | None, offences: int, now: float
    ) -> None:
        pending = self._intents.get((command, key))
        if pending is not None:
            pending[9], pending[10], pending[11] = expires_at, offences, now
            return
        self._known.pop((command, key), None)
        self._c.execute(
            "UPDATE entries SET expires_at = ?, offences = ?, last_offence = ? "
            "WHERE command = ? AND key = ?",
            (expires_at, offences, now, command, key),
        )

    def add_job(self, order_id: str, command: str, request: Request, now: float) -> None:
        self._c.execute(
            "INSERT OR REPLACE INTO jobs (order_id, command, request, created_at) "
            "VALUES (?, ?, ?, ?)",
            (order_id, command, encode_request(request), now),
        )

    def save_cursor(self, source: str, position: str, now: float) -> None:
        """Store a source's cursor with this transaction (only the last one per source is
        written: within one transaction the earlier ones are moot)."""
        self._cursors[source] = (position, now)

    def _flush_cursors(self) -> None:
        if self._cursors:
            self._c.executemany(
                "INSERT INTO cursors (source, position, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (source) DO UPDATE SET position = excluded.position, "
                "updated_at = excluded.updated_at",
                [(src, pos, now) for src, (pos, now) in self._cursors.items()],
            )
            self._cursors.clear()


class _Reader:
    """Queries shared by the writer and the read-only view."""

    _conn: sqlite3.Connection

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def entries(self) -> list[Entry]:
        rows = self._query(_SELECT_ENTRIES + " ORDER BY created_at")
        return [_entry(r) for r in rows]

    def get(self, command: str, key: str) -> Entry | None:
        rows = self._query(
            _SELECT_ENTRIES + " WHERE command = ? AND key = ?", (command, key)
        )
        return _entry(rows[0]) if rows else None

    def get_many(self, idents: list[tuple[str, str]]) -> dict[tuple[str, str], Entry]:
        """``get`` of many (command, key) pairs in one query; missing ones are left out."""
        rows = self._query(
            _SELECT_ENTRIES + " WHERE (command, key) IN "  # noqa: S608 - constant text; values bound
            "(SELECT value ->> 0, value ->> 1 FROM json_each(?))",
            (codec.dumps([list(ident) for ident in idents]),),
        )
        return {(str(r[0]), str(r[1])): _entry(r) for r in rows}

    def find(self, key_or_order_id: str, command: str | None = None) -> list[Entry]:
        """Entries whose key or order id is ``key_or_order_id`` (optionally of one command)."""
        sql = _SELECT_ENTRIES + " WHERE (key = ? OR order_id = ?)"
        params: tuple[Any, ...] = (key_or_order_id, key_or_order_id)
        if command is not None:
            sql += " AND command = ?"
            params += (command,)
        return [_entry(r) for r in self._query(sql, params)]

    def jobs(self) -> list[Job]:
        rows = self._query("SELECT order_id, command, request, created_at FROM jobs")
        return [Job(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def cursor_position(self, source: str) -> str | None:
        rows = self._query("SELECT position FROM cursors WHERE source = ?", (source,))
        return str(rows[0][0]) if rows else None

    def load(self, source: str) -> Cursor | None:
        """The CursorStore protocol of the sources (seam A)."""
        from dfir_ar.sources.base import Cursor

        position = self.cursor_position(source)
        return None if position is None else Cursor(source=source, position=position)


class _Checkpointer:
    """Copies the WAL into the database file every ``interval`` seconds, on its own connection
    and thread. PASSIVE: it never waits for, or blocks, the writer; what it cannot copy yet is
    copied next time, so the WAL stays about one interval of writes long."""

    INTERVAL = 1.0

    def __init__(self, path: Path, interval: float = INTERVAL) -> None:
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="dfir-ar-ledger-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(str(self._path), timeout=10.0, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            log.error("%s: no checkpoints (the WAL will grow): %s", self._path, exc)
            return
        try:
            while not self._stop.wait(self._interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.DatabaseError as exc:
                    log.warning("%s: checkpoint failed (retried): %s", self._path, exc)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Ledger(_Reader):
    """The writer. Thread-safe: every statement runs under one lock on one connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        # The ledger stores alert fields: the file and the -wal/-shm sqlite creates beside it
        # are made 0600 at creation (sqlite gives no mode argument, so the umask does it).
        old_umask = os.umask(0o077)
        try:
            self._open(path)
        finally:
            os.umask(old_umask)
        for suffix in ("", "-wal", "-shm"):  # files an older version created with the umask's
            with contextlib.suppress(OSError):
                os.chmod(f"{path}{suffix}", 0o600)
        self._checkpointer = _Checkpointer(path)

    def _open(self, path: Path) -> None:
        try:
            self._conn = sqlite3.connect(
                str(path), timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit is durable against a process crash (kill -9), and against
            # power loss up to the last checkpoint; an fsync per alert would cap intake at the
            # disk's IOPS.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints (the only fsyncs in this mode) run on their own thread and
            # connection (_Checkpointer), not inside a commit of the writer: an fsync there
            # held up every alert behind it for tens of milliseconds (bench/engine's p99).
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
            version = self._conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if version is None:
                self._conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif version[0] != str(SCHEMA_VERSION):
                raise StateError(
                    f"{path}: ledger schema {version[0]} is not {SCHEMA_VERSION}; "
                    "this dfir-ar cannot use it"
                )
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: cannot open the ledger: {exc}") from None

    @classmethod
    def open(cls, state_dir: Path) -> Ledger:
        """Open (creating ``state_dir`` with mode 0700) the ledger of this host."""
        try:
            make_private_dirs(state_dir)
        except OSError as exc:
            raise StateError(f"state_dir {state_dir}: cannot create: {exc.strerror}") from None
        return cls(state_dir / LEDGER_FILE)

    def close(self) -> None:
        self._checkpointer.stop()
        with self._lock:
            # Fold the WAL into the database so the file alone is the state (and the WAL small).
            with contextlib.suppress(sqlite3.DatabaseError):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One atomic write: everything inside commits together or not at all."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise StateError(f"{self.path}: cannot write the ledger: {exc}") from None
            tx = Tx(self._conn)
            try:
                yield tx
                tx._flush_intents()
                tx._flush_cursors()
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(sqlite3.DatabaseError):
                    self._conn.execute("ROLLBACK")
                raise StateError(f"{self.path}: commit failed: {exc}") from None

    # -- single-statement writes (each its own transaction) -------------------------------

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            try:
                return self._conn.execute(sql, params).rowcount
            except sqlite3.DatabaseError as exc:
                raise StateError(f"{self.path}: ledger write failed: {exc}") from None

    def mark_applied(
        self, command: str, key: str, order_id: str, state: State, applied_at: float
    ) -> None:
        with self.transaction() as tx:
            tx.mark_applied(command, key, order_id, state, applied_at)

    def remove(self, command: str, key: str, order_id: str | None = None) -> bool:
        if order_id is None:
            return self._write(
                "DELETE FROM entries WHERE command = ? AND key = ?", (command, key)
            ) > 0
        return self._write(
            "DELETE FROM entries WHERE command = ? AND key = ? AND order_id = ?",
            (command, key, order_id),
        ) > 0

    def retire(self, entry: Entry, *, only_if_unchanged: bool = False) -> bool:
        """Remove ``entry`` and keep its offender counter (for escalation after the undo).

        With ``only_if_unchanged`` nothing happens (False) when a repeat refreshed the row since
        it was read: the undo raced a new offence and the action must stay.
        """
        return self.retire_many([entry], only_if_unchanged=only_if_unchanged)[0]

    def retire_many(self, entries: list[Entry], *, only_if_unchanged: bool = False) -> list[bool]:
        """``retire`` of many entries in one transaction (a burst of expiries is one commit)."""
        sql = "DELETE FROM entries WHERE command = ? AND key = ? AND order_id = ?"
        if only_if_unchanged:
            sql += " AND expires_at IS ? AND offences = ?"
        done: list[bool] = []
        with self.transaction() as tx:
            for entry in entries:
                params: tuple[Any, ...] = (entry.command, entry.key, entry.order_id)
                if only_if_unchanged:
                    params += (entry.expires_at, entry.offences)
                if tx._c.execute(sql, params).rowcount == 0 and only_if_unchanged:
                    done.append(False)
                    continue
                previous, _ = tx.offender(entry.command, entry.key)
                if entry.offences >= previous:
                    tx.set_offender(entry.command, entry.key, entry.offences, entry.last_offence)
                done.append(True)
        return done

    def remove_job(self, order_id: str) -> None:
        self._write("DELETE FROM jobs WHERE order_id = ?", (order_id,))

    def purge_offenders(self, older_than: float) -> int:
        """Drop counters whose last offence is before ``older_than`` (they have decayed)."""
        return self._write("DELETE FROM offenders WHERE last_offence < ?", (older_than,))

    def count_entries(self) -> int:
        return int(self._query("SELECT count(*) FROM entries")[0][0])


_Work = tuple[
    Callable[[Tx], Any],
    Callable[[Any], None] | None,
    "Future[Any] | None",
    "list[tuple[str, str]] | None",
]


class GroupCommitter:
    """The ledger's one writer thread: queued writes share transactions (group commit).

    Why: a transaction per alert caps intake at the commit rate (and every commit is a wake-up of
    this thread); under load many alerts' intents and cursors commit together, each alert still
    atomically with its cursor. ``after`` callbacks run in order once their transaction is
    durable, which is where the executor starts the actions: nothing runs that is not recorded.
    ``after_batch`` runs once after every batch's callbacks, so they can hand the batch's work on
    as a whole (one pool task for many alerts instead of one each).

    Work items report expected refusals as values, not exceptions. If one raises anyway, or a
    commit fails (disk full, I/O error), the whole batch is rolled back and every later write
    fails too, in order: committing a later cursor would skip the alerts of the failed batch. The
    service stops and a restart re-reads from the last committed cursor.

    The queue is a deque, not queue.Queue: a Queue.put takes a Condition and notifies on every
    item, which made the source thread and eight workers contend for its lock (bench/engine,
    the largest single cost after the pool handoffs). Here a put is an append, and the writer
    is only signalled when it sleeps.
    """

    MAX_BATCH = 512

    def __init__(
        self,
        ledger: Ledger,
        *,
        max_queue: int = 10_000,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        self._ledger = ledger
        # Bounded: a source faster than the disk is slowed down instead of growing memory.
        self._max_queue = max_queue
        self._items: collections.deque[_Work | None] = collections.deque()
        self._cv = threading.Condition(threading.Lock())
        self._sleeping = False
        self._space = threading.Condition(threading.Lock())
        self._after_batch = after_batch
        self.failure: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dfir-ar-ledger", daemon=True)
        self._thread.start()

    def submit(
        self, work: Callable[[Tx], T], after: Callable[[T], None] | None = None
    ) -> Future[T]:
        """Queue ``work(tx)``; the future resolves (after ``after`` ran) once it is committed."""
        fut: Future[T] = Future()
        self._put((work, after, fut, None))
        return fut

    def post(
        self,
        work: Callable[[Tx], Any],
        after: Callable[[Any], None] | None = None,
        *,
        prefetch: list[tuple[str, str]] | None = None,
    ) -> None:
        """``submit`` for callers that never wait (no Future: the hot path makes two an alert).
        ``prefetch``: the (command, key) pairs ``work`` will look up; the whole batch's are read
        in one statement before any work runs (Tx.prefetch)."""
        self._put((work, after, None, prefetch))

    def _put(self, item: _Work) -> None:
        if self.failure is not None:
            raise StateError(f"ledger writes stopped after an error: {self.failure}")
        if self._closed:
            raise StateError("the ledger writer is closed")
        self._enqueue(item)

    def _enqueue(self, item: _Work | None) -> None:
        items = self._items
        if len(items) >= self._max_queue and threading.current_thread() is not self._thread:
            with self._space:
                while len(items) >= self._max_queue and self.failure is None:
                    self._space.wait(0.1)
        items.append(item)  # deque.append is atomic
        # The writer sets _sleeping under _cv and re-checks the deque before it waits, so either
        # it sees this item or we see it sleeping (and it is already waiting when we notify).
        if self._sleeping:
            with self._cv:
                self._cv.notify()

    def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        self.submit(lambda tx: None).result()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._enqueue(None)
            self._thread.join()

    def _take(self) -> tuple[list[_Work], bool]:
        """The next batch (waits for one); True when the close marker was reached."""
        items = self._items
        if not items:
            with self._cv:
                self._sleeping = True
                try:
                    while not items:
                        self._cv.wait()
                finally:
                    self._sleeping = False
        batch: list[_Work] = []
        last = False
        while items and len(batch) < self.MAX_BATCH:
            nxt = items.popleft()
            if nxt is None:
                last = True
                break
            batch.append(nxt)
        if len(items) < self._max_queue:
            with self._space:
                self._space.notify_all()
        return batch, last

    def _run(self) -> None:
        while True:
            batch, last = self._take()
            if batch:
                self._commit(batch)
            if last:
                return

    def _commit(self, batch: list[_Work]) -> None:
        if self.failure is not None:
            for _, _, fut, _ in batch:
                if fut is not None:
                    fut.set_exception(StateError(f"ledger writes stopped: {self.failure}"))
            return
        done: list[tuple[Future[Any] | None, Callable[[Any], None] | None, Any]] = []
        wanted = [pair for item in batch if item[3] for pair in item[3]]
        try:
            with self._ledger.transaction() as tx:
                if wanted:
                    tx.prefetch(wanted)
                for work, after, fut, _ in batch:
                    done.append((fut, after, work(tx)))
        except Exception as exc:  # noqa: BLE001 - any failure stops all later writes, loudly
            self.failure = exc
            log.critical("ledger commit failed; no further writes: %s", exc)
            for _, _, fut, _ in batch:
                if fut is not None:
                    fut.set_exception(exc)
            with self._space:
                self._space.notify_all()
            return
        failed: list[tuple[Future[Any], Exception]] = []
        for fut, after, value in done:
            if after is not None:
                try:
                    after(value)
                except Exception as cb_exc:  # one bad callback must not stop the others
                    log.exception("after-commit step failed")
                    if fut is not None:
                        failed.append((fut, cb_exc))
                    continue
        if self._after_batch is not None:
            try:
                self._after_batch()
            except Exception:  # logged; the rows are committed, a restart reconciles them
                log.exception("after-commit batch step failed")
        # Futures resolve after the batch step, so a waiter sees its work handed on.
        bad = {id(f) for f, _ in failed}
        for fut, error in failed:
            fut.set_exception(error)
        for fut, _, value in done:
            if fut is not None and id(fut) not in bad:
                fut.set_result(value)


class StateLock:
    """An exclusive lock on a state_dir: one serve (or one in-process `run`/`release`) at a time.

    Two processes reconciling the same ledger would undo and redo each other's blocks; the
    control socket alone cannot prevent it (a stale or deleted socket file).
    """

    FILE = "serve.lock"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / self.FILE
        self._fd: int | None = None

    def acquire(self, what: str) -> StateLock:
        import fcntl

        try:
            make_private_dirs(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot open the state lock: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StateError(
                f"{self.path.parent}: in use by another dfir-ar process ({holder}); "
                f"cannot {what} (stop it, or talk to it through its control socket)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {what}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class LedgerView(_Reader):
    """A read-only connection for the CLI: never blocks or changes the running service."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise StateError(f"{path}: no ledger yet (nothing has run with this state_dir)")
        try:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: cannot open the ledger read-only: {exc}") from None
        self.path = path

    @classmethod
    def open(cls, state_dir: Path) -> LedgerView:
        return cls(state_dir / LEDGER_FILE)

    def close(self) -> None:
        self._conn.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self._conn.execute(sql, params).fetchall())
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot read the ledger: {exc}") from None
