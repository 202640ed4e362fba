"""Opening one scanned file safely, and the result record of one scan, for both YARA engines.

Shared by the libyara scanning threads (collectors/yara_scan.py) and the YARA-X worker processes
(collectors/yarax_worker.py), so both open files the same way: O_NOFOLLOW (a path swapped for a
symlink after the walk is not followed), O_NOATIME where allowed, O_NONBLOCK (a path swapped for
a FIFO cannot block the open), then fstat on the descriptor: what is scanned is exactly the
regular file that was checked. Cheap to import (no dataclasses, no hashlib until a file
matches): each worker process imports it at start (dataclasses cost ~20 ms of a ~70 ms start).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, NamedTuple

READ_MAX = 256 * 1024
"""Files up to this size are read and scanned from memory; the engine maps bigger ones (measured
with libyara: reading saves ~20 us per small file, mapping is ~5% cheaper from 1 MiB up)."""
_NOATIME = getattr(os, "O_NOATIME", 0)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ScanResult(NamedTuple):
    target: dict[str, Any]
    matches: list[dict[str, Any]]
    scanned_bytes: int = 0
    error: str = ""
    kind: str = ""
    """'' ok, 'unreadable', 'timeout', 'vanished', 'skipped'."""


class BatchDone(NamedTuple):
    """One piece of work done: clean files only counted, everything else itemised."""

    clean_files: int
    clean_bytes: int
    results: list[ScanResult]
    pids: int = 0
    """Process work items finished (for progress)."""


def path_fields(path: str) -> dict[str, str]:
    """A file name as JSON: the text, plus the exact bytes in hex when it is not valid UTF-8."""
    raw = os.fsencode(path)
    try:
        return {"path": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path": raw.decode("utf-8", "replace"), "path_hex": raw.hex()}


def file_target(path: str) -> dict[str, Any]:
    return {"type": "file", **path_fields(path)}


def file_result(path: str, error: str, kind: str, scanned: int = 0) -> ScanResult:
    return ScanResult(file_target(path), [], scanned, error, kind)


def open_regular(path: str, max_size: int) -> tuple[int, os.stat_result] | ScanResult:
    """(descriptor, its stat) of the regular file at ``path``, or why it is not scanned."""
    try:
        try:
            fd = os.open(path, _OPEN_FLAGS | _NOATIME)
        except PermissionError:
            fd = os.open(path, _OPEN_FLAGS)  # O_NOATIME needs ownership or CAP_FOWNER
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            # Swapped for a symlink after the walk saw a regular file: not followed.
            return file_result(path, "became a symlink; not followed", "unreadable")
        return file_result(path, exc.strerror or str(exc), "unreadable")
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        return file_result(path, exc.strerror or str(exc), "unreadable")
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return file_result(path, "no longer a regular file", "unreadable")
    if st.st_size > max_size:
        os.close(fd)
        return file_result(path, "grew past the size cap", "skipped")
    return fd, st


def read_small(fd: int, size: int) -> bytes | None:
    """The file's bytes when it is at most READ_MAX (scanned from memory), else None (the
    engine scans it through ``/proc/self/fd/FD``)."""
    if size > READ_MAX:
        return None
    return os.pread(fd, size, 0) if size else b""


def matched_target(path: str, st: os.stat_result, data: bytes | None, fd: int) -> dict[str, Any]:
    """The target record of a file that matched: its path, size and SHA-256 (from the bytes
    already read, or read again through the descriptor)."""
    import hashlib  # only once a file matches (~4 ms to import in a worker)

    target = file_target(path)
    target["size"] = st.st_size
    target["sha256"] = sha256_fd(fd) if data is None else hashlib.sha256(data).hexdigest()
    return target


def sha256_fd(fd: int) -> str:
    import hashlib

    h = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)
        offset += len(chunk)
