"""A process core as independent zstd frames, read and compressed on every core, stored in order.

Why this shape (per GiB of core, measured here with perf): reading the process costs ~0.25 CPU-s
(process_vm_readv), zstd -1 ~0.27, SHA-256 and the spool write of the ~1/3 as many compressed
bytes ~0.2 + 0.1: ~0.95 in all, against ~0.33 for a plain read of /proc/PID/mem. On one thread
that is a third of a plain read's speed, so the work has to be spread over the cores. Each of
``workers`` threads takes the next 1 MiB piece of the core file, reads it into its own buffer and
compresses it at once, while the bytes are still in that core's cache: a reader thread handing
buffers to compressor threads and a third thread hashing cost 10-40% more CPU (every byte crossed
cores cold, and recycled buffers were cold too). Whichever worker finishes the piece that is next
in file order writes it, and every finished piece after it, through the artifact writer (which
hashes while it writes). Concatenated frames are one valid zstd stream; each has its content
checksum.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from dfir_ar import elfcore
from dfir_ar.collector import ArtifactWriter

T = TypeVar("T")

WINDOW = 8
"""Pieces taken but not yet written, at most (at least twice the workers): bounds the memory
held by a stalled writer."""
PROGRESS_EVERY = 256 << 20
"""Bytes between progress reports (each is a log line)."""


class Sequencer(Generic[T]):
    """Hands out piece numbers 0..count-1 in order and writes finished pieces in that order,
    one writer at a time, whichever thread finished them (no I/O of its own).

    ``halt(reason, at)`` ends the file before piece ``at`` (pieces before it that are in flight
    are still written); a write that raises ends it where it failed, and the error is kept for
    the caller to raise.
    """

    def __init__(self, count: int, write: Callable[[T], None], window: int = WINDOW) -> None:
        self._cond = threading.Condition()
        self._write = write
        self._window = window
        self._limit = count
        self._next_take = 0
        self._next_write = 0
        self._done: dict[int, T] = {}
        self._writing = False
        self.stopped = ""
        """Why the file ends before ``count`` pieces ('' when it does not)."""
        self.error: BaseException | None = None

    @property
    def written(self) -> int:
        """Pieces written so far (all of them, in order, from 0)."""
        return self._next_write

    def take(self, should_stop: Callable[[], str] = lambda: "") -> int | None:
        """The next piece to produce, or None when there is none left or the file has ended."""
        with self._cond:
            while (
                self._next_take - self._next_write >= self._window
                and self._next_take < self._limit
            ):
                self._cond.wait()
            if self._next_take >= self._limit:
                return None
            reason = should_stop()
            if reason:
                self._halt(reason, self._next_take)
                return None
            seq = self._next_take
            self._next_take += 1
            return seq

    def halt(self, reason: str, at: int) -> None:
        """End the file before piece ``at``."""
        with self._cond:
            self._halt(reason, at)

    def _halt(self, reason: str, at: int) -> None:
        if at < self._limit:
            self._limit = at
            self.stopped = reason
        self._cond.notify_all()

    def fail(self, exc: BaseException, at: int) -> None:
        """Producing piece ``at`` raised: end the file there and keep the error."""
        with self._cond:
            if self.error is None:
                self.error = exc
            self._halt("error", at)

    def finish(self, seq: int, item: T) -> None:
        """Piece ``seq`` is ready. Writes it (and what follows) unless another thread is
        writing, which then writes it too; a piece after the end is dropped."""
        with self._cond:
            self._done[seq] = item
            if self._writing:
                return
            self._writing = True
            while self._next_write < self._limit and self._next_write in self._done:
                ready = self._done.pop(self._next_write)
                self._cond.release()
                try:
                    self._write(ready)
                except BaseException as exc:  # noqa: BLE001 - kept for the caller to raise
                    self._cond.acquire()
                    if self.error is None:
                        self.error = exc
                    self._halt("error", self._next_write)
                    break
                self._cond.acquire()
                self._next_write += 1
                self._cond.notify_all()
            self._writing = False
            if self._next_write >= self._limit:
                self._done.clear()


def dump(
    mem: elfcore.ProcessMemory,
    report: elfcore.DumpReport,
    writer: ArtifactWriter,
    *,
    level: int,
    workers: int,
    should_stop: Callable[[], str] = lambda: "",
    progress: Callable[[int, int], None] = lambda done, total: None,
    chunk: int = elfcore.READ_CHUNK,
    progress_every: int = PROGRESS_EVERY,
) -> elfcore.DumpReport:
    """Write ``report.layout``'s core file as zstd frames to ``writer``, reading ``mem`` on
    ``workers`` threads (this one included), and fill in ``report``. An error of
    ``writer.write`` (byte cap, disk full) is raised once every thread has stopped; ``report``
    then tells what was written before it."""
    import zstandard

    layout = report.layout
    chunks = elfcore.core_chunks(layout, chunk)
    holes: list[elfcore.Hole] = []

    def store(item: tuple[bytes, int, list[elfcore.Hole]]) -> None:
        frame, size, found = item
        writer.write(frame)
        report.written += size
        holes.extend(found)

    seq_er: Sequencer[tuple[bytes, int, list[elfcore.Hole]]] = Sequencer(
        1 + len(chunks), store, window=max(WINDOW, 2 * workers)
    )

    reported = 0

    def work(main: bool) -> None:
        nonlocal reported
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        buf = bytearray(chunk)
        view = memoryview(buf)
        while (seq := seq_er.take(should_stop)) is not None:
            try:
                if seq == 0:
                    seq_er.finish(0, (cctx.compress(layout.header), len(layout.header), []))
                    continue
                addr, size = chunks[seq - 1]
                try:
                    found = mem.fill(addr, size, buf)
                except elfcore.ProcessGone:
                    seq_er.halt("process exited during the dump", seq)
                    return
                seq_er.finish(seq, (cctx.compress(view[:size]), size, found))
            except BaseException as exc:  # noqa: BLE001 - raised by the calling thread
                seq_er.fail(exc, seq)
                return
            if main and report.written - reported >= progress_every:
                reported = report.written
                progress(report.written, layout.size)

    threads = [
        threading.Thread(target=work, args=(False,), name=f"memory-dump-{i}", daemon=True)
        for i in range(1, max(1, workers))
    ]
    for t in threads:
        t.start()
    try:
        work(True)
    finally:
        for t in threads:
            t.join()
    report.unreadable = elfcore.merge_holes(holes)
    progress(report.written, layout.size)
    if seq_er.error is not None:
        raise seq_er.error
    report.stopped = seq_er.stopped
    report.complete = not report.stopped and seq_er.written == 1 + len(chunks)
    return report
