"""What every execution leaves behind for people and for the SIEM.

``active-responses.log`` keeps Wazuh's >= 4.2 line format exactly, because Wazuh re-reads that file
and raises rules 650-658 from it (651/652: firewall-drop add/delete):
``YYYY/MM/DD HH:MM:SS active-response/bin/<name>: <message>`` with the messages ``Starting``, the
input JSON, ``Ended`` or ``Aborted``. Neither OSSEC nor Wazuh records whether the action worked, so
``audit.jsonl`` beside it gets one JSON record per execution with the outcome, exit status and
duration. Attacker-controlled text only ever enters these files inside JSON output
(dfir_ar.codec) or through ``ActiveResponseLog.encode``, which escapes every character that is
not printable (a script's stderr in an ``Error:`` message), so it cannot forge a line.

The files are opened without following a symbolic link and must be regular files with one
link: Wazuh's logs directory belongs to the wazuh account, and root (wazuh-ar, serve) appending
through a link planted there would write attacker text into any file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from dfir_ar import codec
from dfir_ar.errors import StateError

log = logging.getLogger(__name__)

AR_LOG = "active-responses.log"
AUDIT_LOG = "audit.jsonl"


def _open_append(path: Path) -> int:
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        # O_NONBLOCK: a FIFO planted there would block the open until a reader comes (for
        # ever); with it the open fails (ENXIO) or returns, and the type check below refuses.
        fd = os.open(
            path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
            0o640,
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"{path} is a symbolic link; refusing to write through it "
                             "(remove it: dfir-ar creates the log itself)") from None
        if exc.errno == errno.ENXIO:
            raise StateError(f"{path} is not a regular file (a FIFO); refusing to write to it "
                             "(remove it: dfir-ar creates the log itself)") from None
        raise StateError(f"{path}: cannot open for append: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "a hard link"
        raise StateError(f"{path} is {what}; refusing to write to it (remove it: dfir-ar "
                         "creates the log itself)")
    os.set_blocking(fd, True)
    return fd


def _one_line(message: str) -> str:
    """``message`` with every character that is not printable (line breaks, escapes, U+2028...)
    written as its Python escape, so free text cannot end a log line or start another."""
    if message.isprintable():
        return message
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message
    )


class _AppendFile:
    """One O_APPEND descriptor; each record is one write(2), so lines never interleave.

    No lock around the write: the kernel serialises O_APPEND writes, and a Python lock held
    across the syscall made eight workers queue behind each other (measured in bench/engine).
    The lock only guards the rotation check; a descriptor replaced after a rotation is closed
    a while later, so a thread still holding it writes to the rotated file, never to a reused
    descriptor number.
    """

    #: Seconds between checks that logrotate moved the file away (a stat per line is costly).
    ROTATION_CHECK = 1.0
    RETIRE_AFTER = 10.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = _open_append(path)
        self._ident = self._fd_ident(self._fd)
        self._checked = time.monotonic()
        self._retired: list[tuple[int, float]] = []
        self._lock = threading.Lock()

    @staticmethod
    def _fd_ident(fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)

    def append(self, data: bytes) -> None:
        now = time.monotonic()
        if now - self._checked >= self.ROTATION_CHECK:
            self._check_rotation(now)
        os.write(self._fd, data)

    def _check_rotation(self, now: float) -> None:
        with self._lock:
            if now - self._checked < self.ROTATION_CHECK:
                return
            self._checked = now
            for fd, since in list(self._retired):
                if now - since >= self.RETIRE_AFTER:
                    os.close(fd)
                    self._retired.remove((fd, since))
            # Reopen when logrotate moved the file away (as Wazuh's logcollector does).
            try:
                st = os.stat(self.path)
                moved = (st.st_dev, st.st_ino) != self._ident
            except FileNotFoundError:
                moved = True
            if moved:
                try:
                    fd = _open_append(self.path)
                except StateError as exc:
                    # Keep writing to the file already open (nothing is lost) and say why.
                    log.error("%s; still writing to the file open before", exc)
                    return
                self._retired.append((self._fd, now))
                self._fd, self._ident = fd, self._fd_ident(fd)

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._retired:
                os.close(fd)
            self._retired.clear()
            os.close(self._fd)


_stamp_cache: list[tuple[int, str]] = [(-1, "")]


def wazuh_timestamp(now: float) -> str:
    # Cached per second: strftime(localtime()) was a visible share of each log line.
    second = int(now)
    cached = _stamp_cache[0]
    if cached[0] == second:
        return cached[1]
    text = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(second))
    _stamp_cache[0] = (second, text)
    return text


def ar_line(now: float, executable: str, message: str) -> str:
    """One active-responses.log line (no trailing newline)."""
    return f"{wazuh_timestamp(now)} active-response/bin/{executable}: {message}"


def wazuh_message(
    action: str, executable: str, alert: Mapping[str, Any], extra_args: tuple[str, ...], node: str
) -> dict[str, Any]:
    """The JSON Wazuh execd writes to a script's stdin (and logs as the input JSON)."""
    return {
        "version": 1,
        "origin": {"name": node, "module": "wazuh-execd"},
        "command": action,
        "parameters": {
            "extra_args": list(extra_args),
            "alert": dict(alert),
            "program": f"active-response/bin/{executable}",
        },
    }


class ActiveResponseLog:
    def __init__(self, log_dir: Path) -> None:
        self._file = _AppendFile(log_dir / AR_LOG)

    @property
    def path(self) -> Path:
        return self._file.path

    @staticmethod
    def encode(now: float, executable: str, *messages: str) -> bytes:
        """The lines ``write`` appends, for callers that gather a batch into one write."""
        return ActiveResponseLog.encode_lines(
            now, executable,
            tuple(_one_line(m).encode("utf-8", "backslashreplace") for m in messages),
        )

    def write(self, now: float, executable: str, *messages: str) -> None:
        self._file.append(self.encode(now, executable, *messages))

    @staticmethod
    def encode_lines(now: float, executable: str, messages: tuple[bytes, ...]) -> bytes:
        """``encode`` for messages that are UTF-8 already, each one line (JSON text from
        dfir_ar.codec or a RawAlert): no decode and re-encode of an alert-sized line."""
        stamp = f"{wazuh_timestamp(now)} active-response/bin/{executable}: ".encode(
            "utf-8", "backslashreplace"
        )
        return b"".join([stamp + m + b"\n" for m in messages])

    def write_bytes(self, data: bytes) -> None:
        """Append lines made by ``encode`` (one write(2): whole lines never interleave)."""
        if data:
            self._file.append(data)

    def close(self) -> None:
        self._file.close()


class AuditRecord(msgspec.Struct, frozen=True, gc=False):
    """One execution (or refusal) as the audit log records it."""

    time: float
    order_id: str
    command: str
    action: str
    """add | delete | refresh | collect | refused | release"""
    key: str | None
    outcome: str
    """ok | failed | timeout | refused | already-active"""
    duration: float = 0.0
    exit_status: int | None = None
    error: str | None = None
    agent: str = ""
    srcip: str | None = None
    username: str | None = None
    alert_id: str | None = None
    rule_id: int | None = None
    operator: str | None = None
    expires_at: float | None = None
    """When the action is undone (add/refresh), epoch seconds; None: never or not stateful."""
    offences: int | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


_AUDIT_ENCODER = msgspec.json.Encoder(order="sorted", enc_hook=str)


class AuditLog:
    def __init__(self, log_dir: Path) -> None:
        self._file = _AppendFile(log_dir / AUDIT_LOG)

    @property
    def path(self) -> Path:
        return self._file.path

    @staticmethod
    def encode(record: AuditRecord) -> bytes:
        """One record as its JSON line (keys sorted), for callers that gather a batch into one
        write. Encoded straight from the Struct (this runs once per execution); an error text
        that is not valid UTF-8 takes the general path."""
        try:
            return codec.line_safe(_AUDIT_ENCODER.encode(record)) + b"\n"
        except (UnicodeEncodeError, TypeError):
            return codec.dumpb(msgspec.structs.asdict(record), sort_keys=True) + b"\n"

    def write(self, record: AuditRecord) -> None:
        self._file.append(self.encode(record))

    def write_bytes(self, data: bytes) -> None:
        """Append records made by ``encode`` (one write(2))."""
        if data:
            self._file.append(data)

    def close(self) -> None:
        self._file.close()


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every record of an audit file (for tests and tools) that may be written meanwhile.

    Only the text after the last newline is skipped: a reader can see a write(2) half done.
    Any complete line that is not a JSON object raises, since the log never holds one.
    """
    if not path.exists():
        return []
    *lines, _torn = path.read_bytes().split(b"\n")
    out: list[dict[str, Any]] = []
    for line in lines:
        rec = json.loads(line)
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: an audit line is not a JSON object: {line[:80]!r}")
        out.append(rec)
    return out
