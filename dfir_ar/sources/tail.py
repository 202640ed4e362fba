"""Follow an alerts file with a durable cursor (device, inode, offset).

- Resume: the cursor's file is read from the cursor's offset; a restart neither loses nor repeats.
- Rotation (rename + new file, what logrotate and Wazuh do): the old file is read through the
  descriptor still open until it has been quiet for ``rotate_wait`` (a writer may append to it
  until it reopens; at most ``rotate_max``), then the new file from offset 0. After a restart whose
  cursor names a rotated file, that file is found again by inode beside the path and finished
  first.
- Truncation (copytruncate): the file shrinking below what was read restarts at offset 0.
- A line without its newline is not consumed until it is complete.
- First start without a cursor: like Wazuh's ``only-future-events``, an existing file is
  followed from its end (``start_at = "end"``), so old alerts do not trigger fresh blocks;
  ``start_at = "beginning"`` reads it whole. A file that appears later is read from 0. Either
  place is recorded as the cursor at once, so a stop before the first alert loses nothing: the
  next start resumes there (and a file that appeared meanwhile is still read from 0).

Waking up: inotify (through ctypes, on the file's directory, so renames and re-creations are
seen too) wakes the tail on the write itself; a slow safety poll (``safety_poll``) covers what
inotify misses (some network and overlay filesystems). Where inotify is unavailable the tail polls
every ``poll_interval`` (2 ms): an empty read and two stats, well within the engine's 10 ms budget.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dfir_ar.alert import Alert
from dfir_ar.parsers import DEFAULT_MAX_ALERT_BYTES, UnknownFormat, detect_format
from dfir_ar.sources.base import Cursor, CursorStore, Handler, Rejected
from dfir_ar.sources.reader import RecordReader

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Seconds between attempts to set up the inotify watch while the directory does not exist.
WATCH_RETRY = 1.0
#: Seconds between looks for a file that does not exist yet, when nothing watches for it: its
#: first alert may wait this long once; a missing file is not worth a wake-up every 10 ms.
APPEAR_POLL = 0.1
#: Most records handed to a BatchHandler at once (one ledger transaction).
BATCH = 512
ROTATED_SEARCH_LIMIT = 20_000
STOP_CHECK = 0.1


@dataclass(frozen=True, slots=True)
class FilePosition:
    dev: int
    ino: int
    offset: int

    def encode(self) -> str:
        return f"v1:{self.dev}:{self.ino}:{self.offset}"

    @property
    def before_the_file(self) -> bool:
        """The cursor of a tail that started before the file existed (no inode is 0): the file
        that appears is read from its start, however many starts later."""
        return self.ino == 0

    @classmethod
    def decode(cls, text: str) -> FilePosition | None:
        parts = text.split(":")
        if len(parts) != 4 or parts[0] != "v1":
            return None
        try:
            dev, ino, offset = (int(p, 10) for p in parts[1:])
        except ValueError:
            return None
        if min(dev, ino, offset) < 0:
            return None
        return cls(dev, ino, offset)


# <sys/inotify.h>
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_WATCH = (
    _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
    | _IN_DELETE
)


class Inotify:
    """Wake-ups for changes in one directory and in the file being read. The events themselves
    are not parsed: any event means "look again", so a missed or merged event can delay a read,
    never lose one.

    The file's own inode is watched too: a directory watch only hears writes made through a name
    in that directory, and OSSEC writes alerts.log through another name (alerts.log is a hard
    link to logs/alerts/YYYY/Mon/ossec-alerts-DD.log); a symlinked alerts file is the same case.
    """

    def __init__(self, directory: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        try:
            self._add(directory, _WATCH)
        except OSError:
            os.close(fd)
            raise
        self._file_wd: int | None = None

    def _add(self, path: Path, mask: int) -> int:
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return wd

    def watch_file(self, path: Path) -> None:
        """Also wake on writes to the inode ``path`` names now (moved on after a rotation)."""
        if self._file_wd is not None:
            # The old inode's watch goes; EINVAL if the kernel already dropped it (file deleted).
            self._libc.inotify_rm_watch(self.fd, self._file_wd)
            self._file_wd = None
        try:
            self._file_wd = self._add(path, _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE)
        except OSError as exc:
            log.debug("no inotify watch on %s (%s); the directory watch and poll remain", path, exc)

    def wait(self, timeout: float) -> bool:
        """Block until something changed in the directory or ``timeout`` passed."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        os.close(self.fd)


class _Open:
    """One open file being read: its identity, descriptor and framing state."""

    def __init__(self, path: Path, fd: int, reader: RecordReader) -> None:
        st = os.fstat(fd)
        self.path = path
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.reader = reader
        self.read_pos = reader.position
        self.prefix = f"v1:{self.dev}:{self.ino}:"

    def close(self) -> None:
        os.close(self.fd)


class FileTail:
    """An AlertSource following one file (see the module docstring)."""

    def __init__(
        self,
        name: str,
        path: Path,
        cursor_store: CursorStore,
        *,
        fmt: str = "auto",
        max_alert_bytes: int = DEFAULT_MAX_ALERT_BYTES,
        poll_interval: float = 0.002,
        start_at: str = "end",
        use_inotify: bool = True,
        safety_poll: float = 0.1,
        rotate_wait: float = 0.1,
        rotate_max: float = 2.0,
    ) -> None:
        if start_at not in ("end", "beginning"):
            raise ValueError("start_at must be 'end' or 'beginning'")
        self.name = name
        self.path = Path(path)
        self.cursor_store = cursor_store
        self.fmt = fmt
        self.max_alert_bytes = max_alert_bytes
        self.poll_interval = poll_interval
        self._next_watch = 0.0
        self.start_at = start_at
        self.use_inotify = use_inotify
        self.safety_poll = safety_poll
        self.rotate_wait = rotate_wait
        self.rotate_max = rotate_max
        self.waker: Inotify | None = None
        self.ready = threading.Event()
        """Set once the file is open and positioned: lines appended from then on are delivered."""

    def __repr__(self) -> str:
        return f"FileTail({self.name!r})"

    # -- opening -------------------------------------------------------------------------------

    def _reader(self, start: int, resync: bool = False, fmt: str | None = None) -> RecordReader:
        return RecordReader(fmt or self.fmt, self.max_alert_bytes, start, resync=resync)

    def _format_at(self, fd: int, offset: int) -> str:
        """The framing of a file read from the middle: judged by its head, not by the first line
        after the offset (which may be the middle of an OSSEC block)."""
        if self.fmt != "auto" or offset == 0:
            return self.fmt
        head = os.pread(fd, 4096, 0)
        try:
            return "ossec" if detect_format(head) == "ossec" else "auto"
        except UnknownFormat:
            return "auto"

    def _open(self, path: Path, offset: int, resync: bool = False) -> _Open:
        if self.waker is not None and path == self.path:
            # Before the open: a write between the two is then seen by the next read anyway.
            self.waker.watch_file(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            fmt = self._format_at(fd, offset)
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
            return _Open(path, fd, self._reader(offset, resync, fmt))
        except BaseException:
            os.close(fd)
            raise

    def _end_offset(self, path: Path) -> int:
        """Where "the end" is: after the last complete line, so a half-written one is not cut."""
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            window = min(size, self.max_alert_bytes + 1)
            f.seek(size - window)
            tail = f.read(window)
        nl = tail.rfind(b"\n")
        return size if nl < 0 else size - window + nl + 1

    def _find_rotated(self, pos: FilePosition) -> Path | None:
        """The file the cursor names, found by device and inode after a rotation: beside
        ``path`` (logrotate's alerts.json.1) or up to two directories below it (Wazuh moves
        alerts.json to logs/alerts/YYYY/Mon/ossec-alerts-DD.json). Bounded, and only regular
        files; a rotated file that was compressed meanwhile is gone (a warning says so)."""
        budget = ROTATED_SEARCH_LIMIT
        level = [self.path.parent]
        for _depth in range(3):
            below: list[Path] = []
            for directory in level:
                try:
                    entries = list(os.scandir(directory))
                except OSError:
                    continue
                for entry in entries:
                    budget -= 1
                    if budget < 0:
                        return None
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            below.append(Path(entry.path))
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) == (pos.dev, pos.ino) and entry.is_file(
                        follow_symlinks=False
                    ):
                        return Path(entry.path)
            level = below
        return None

    # -- reading -------------------------------------------------------------------------------

    def _pump(self, cur: _Open, handle: Handler, stop: threading.Event) -> int:
        """Read what is there now; hand every complete record over. Returns bytes read."""
        total = 0
        name, prefix = self.name, cur.prefix
        many = getattr(handle, "many", None)
        while not stop.is_set():
            try:
                data = os.read(cur.fd, CHUNK)
            except BlockingIOError:
                break
            if not data:
                break
            total += len(data)
            cur.read_pos += len(data)
            if many is None:
                for item, end in cur.reader.feed(data):
                    handle(item, Cursor(name, prefix + str(end)))
                continue
            batch: list[Alert | Rejected] = []
            end = 0
            for item, end in cur.reader.feed(data):
                batch.append(item)
                if len(batch) >= BATCH:
                    many(batch, Cursor(name, prefix + str(end)))
                    batch = []
            if batch:
                many(batch, Cursor(name, prefix + str(end)))
        return total

    def _drain_rotated(self, cur: _Open, handle: Handler, stop: threading.Event) -> None:
        """Keep reading a file that was just rotated away until its writer has stopped writing
        to it (quiet for rotate_wait), or rotate_max has passed: a writer appends to its old
        descriptor until it notices the rotation and reopens."""
        start = quiet = time.monotonic()
        while not stop.is_set():
            if self._pump(cur, handle, stop):
                quiet = time.monotonic()
            now = time.monotonic()
            if now - quiet >= self.rotate_wait or now - start >= self.rotate_max:
                return
            stop.wait(min(self.poll_interval * 5, self.rotate_wait / 4))

    def _finish(self, cur: _Open, handle: Handler, stop: threading.Event) -> None:
        """Read ``cur`` to its end for the last time (it was rotated away) and close it."""
        try:
            self._pump(cur, handle, stop)
            if stop.is_set():
                # Stopping mid-rotation: a half-written last line is not refused; the cursor
                # stays before it and the next start finishes this file by inode.
                return
            for item, end in cur.reader.finish():
                handle(item, Cursor(self.name, cur.prefix + str(end)))
        finally:
            cur.close()

    def _start(self, handle: Handler, stop: threading.Event) -> _Open | None:
        cursor = self.cursor_store.load(self.name)
        pos = FilePosition.decode(cursor.position) if cursor is not None else None
        if cursor is not None and pos is None:
            log.warning("%s: unreadable cursor %r; starting as if new", self.name, cursor.position)
        waited = False
        while not stop.is_set():
            try:
                st = os.stat(self.path)
                break
            except FileNotFoundError:
                if pos is None:
                    # Where this source stands, recorded: a file that appears while serve is
                    # stopped is still read from its start by the next one.
                    pos = FilePosition(0, 0, 0)
                    self._mark(handle, pos)
                if not waited:
                    log.info("%s: waiting for %s to appear", self.name, self.path)
                    waited = True
                if self.waker is not None:
                    self._idle(stop)
                else:
                    self._retry_watch()
                    if self.waker is None:
                        stop.wait(max(self.poll_interval, APPEAR_POLL))
        else:
            return None
        if pos is not None and pos.before_the_file:
            pos, waited = None, True  # the file it waited for is here: read it from 0 (below)
        if pos is not None and (st.st_dev, st.st_ino) == (pos.dev, pos.ino):
            if st.st_size >= pos.offset:
                return self._open(self.path, pos.offset)
            log.warning(
                "%s: file is shorter (%d) than the cursor (%d): truncated; reading from 0",
                self.name, st.st_size, pos.offset,
            )
            return self._open(self.path, 0)
        if pos is not None:
            rotated = self._find_rotated(pos)
            if rotated is not None:
                log.info("%s: finishing rotated %s from offset %d", self.name, rotated, pos.offset)
                try:
                    old = self._open(rotated, pos.offset)
                except OSError as exc:
                    log.warning("%s: cannot reopen %s: %s", self.name, rotated, exc)
                else:
                    self._finish(old, handle, stop)
            else:
                log.warning(
                    "%s: the file the cursor names (inode %d) is gone; reading %s from 0",
                    self.name, pos.ino, self.path,
                )
            return self._open(self.path, 0)
        if waited or self.start_at == "beginning":
            return self._open(self.path, 0)
        offset = self._end_offset(self.path)
        log.info("%s: no cursor yet; following %s from its end (offset %d)", self.name, self.path, offset)
        cur = self._open(self.path, offset, resync=offset > 0)
        # Recorded now, not with the first alert: a stop before any alert arrives must not
        # make the next start take "the end" again, past what was written in between.
        self._mark(handle, FilePosition(cur.dev, cur.ino, offset))
        return cur

    def _mark(self, handle: Handler, pos: FilePosition) -> None:
        """Record ``pos`` as this source's cursor with no record (through the handler, so it is
        written in order behind anything handed over before; a handler without ``many`` keeps
        no cursors of its own)."""
        many = getattr(handle, "many", None)
        if many is not None:
            many([], Cursor(self.name, pos.encode()))

    def _idle(self, stop: threading.Event) -> None:
        """Until inotify says something changed, safety_poll passed, or stop is set (checked
        every STOP_CHECK seconds whatever safety_poll is)."""
        if self.waker is None:
            self._retry_watch()
            if self.waker is not None:
                return  # watching only from now: what was written since the last look is read first
            stop.wait(self.poll_interval)
            return
        deadline = time.monotonic() + self.safety_poll
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.waker.wait(min(left, STOP_CHECK)):
                return

    def _retry_watch(self) -> None:
        """Without a watch (its directory did not exist yet, e.g. Wazuh installed after dfir-ar),
        try again every WATCH_RETRY seconds: once it exists, wait on inotify instead of polling
        every few milliseconds for the rest of the run."""
        if self.waker is None and self.use_inotify and time.monotonic() >= self._next_watch:
            self._next_watch = time.monotonic() + WATCH_RETRY
            self._watch(quiet=True)

    def _watch(self, *, quiet: bool = False) -> None:
        if not self.use_inotify:
            return
        try:
            self.waker = Inotify(self.path.parent)
        except (OSError, AttributeError) as exc:
            if not quiet:
                log.info("%s: no inotify (%s); polling (every %g s once the file exists) until "
                         "it can watch", self.name, exc, self.poll_interval)
        else:
            if quiet:
                log.info("%s: watching %s with inotify", self.name, self.path.parent)

    def run(self, handle: Handler, stop: threading.Event) -> None:
        # The watch exists before the first read: a write after that read always wakes us.
        self._watch()
        try:
            self._follow(handle, stop)
        finally:
            if self.waker is not None:
                self.waker.close()
                self.waker = None

    def _follow(self, handle: Handler, stop: threading.Event) -> None:
        cur: _Open | None = self._start(handle, stop)
        if cur is None:
            return
        self.ready.set()
        try:
            while not stop.is_set():
                if self._pump(cur, handle, stop):
                    continue
                try:
                    st = os.stat(self.path)
                except FileNotFoundError:
                    st = None  # renamed away, new one not created yet: keep reading the old fd
                if st is not None and (st.st_dev, st.st_ino) != (cur.dev, cur.ino):
                    log.info("%s: %s was rotated; finishing the old file", self.name, self.path)
                    self._drain_rotated(cur, handle, stop)
                    old = cur
                    cur = None
                    self._finish(old, handle, stop)
                    cur = self._open(self.path, 0)
                    continue
                if os.fstat(cur.fd).st_size < cur.read_pos:
                    log.warning("%s: %s was truncated; reading from 0", self.name, self.path)
                    os.lseek(cur.fd, 0, os.SEEK_SET)
                    cur.reader = self._reader(0)  # re-detected from the new first line
                    cur.read_pos = 0
                    continue
                self._idle(stop)
        finally:
            if cur is not None:
                cur.close()
