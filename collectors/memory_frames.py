"""Memory images as independent zstd frames, compressed on every core and stored in order.

One mechanism for both images: a Sequencer numbers the pieces, bounds how many are in flight
(a window), and whichever thread finishes the piece that is next in file order writes it, and
every finished piece after it, through the artifact writer (which hashes while it writes).
Concatenated frames are one valid zstd stream (``zstd -d`` and every library read them as one);
each has its content checksum. A writer error (byte cap, disk floor) ends the file where it
happened and is raised to the caller.

Process cores (``dump``), per GiB of core measured here with perf: reading the process costs ~0.25
CPU-s (process_vm_readv), zstd -1 ~0.27, SHA-256 and the spool write of the ~1/3 as many
compressed bytes ~0.2 + 0.1: ~0.95 in all, against ~0.33 for a plain read of /proc/PID/mem. On one
thread that is a third of a plain read's speed, so the work has to be spread over the cores. Each
of ``workers`` threads takes the next 1 MiB piece of the core file, reads it into its own buffer
and compresses it at once, while the bytes are still in that core's cache: a reader thread
handing buffers to compressor threads and a third thread hashing cost 10-40% more CPU (every byte
crossed cores cold, and recycled buffers were cold too).

The physical image (``FrameWriter``) is read by lime.acquire on the caller's thread, into buffers
this module lends, so it is the one shape where pieces are handed to compressor threads.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

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

    ``take`` waits while ``window`` pieces are taken but not written, so a slow writer holds
    back the producers instead of letting pieces pile up in memory. ``count`` None: a stream
    whose length is known only at its ``end()``. ``halt(reason, at)`` ends the file before
    piece ``at`` (pieces before it that are in flight are still written); a write that raises
    ends it where it failed, and the error is kept for the caller to raise.
    """

    def __init__(
        self, count: int | None, write: Callable[[T], object], window: int = WINDOW
    ) -> None:
        self._cond = threading.Condition()
        self._write = write
        self._window = window
        self._limit = sys.maxsize if count is None else count
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

    def end(self) -> None:
        """No piece after those already taken: the stream is complete once they are written."""
        with self._cond:
            self._halt("", self._next_take)

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


FRAME = 8 << 20
"""Bytes per frame of a streamed image: the size of the buffers lent to its reader."""
FRAMES_IN_FLIGHT = 6
"""The streamed image's window (at least twice the workers): its frames are 8x a core's pieces,
so fewer of them; 48 MiB, as much as a stalled writer held before the two writers were one."""


class FrameWriter:
    """A byte stream (the physical image) as FRAME-sized zstd frames, compressed on ``workers``
    threads and written to ``writer`` in order.

    It lends its buffers (``buffer``, ``write_owned``: lime.BufferSink), so RAM read into them
    is compressed without a copy; ``write`` copies small pieces (LiME headers, zero-filled
    pages) in. ``workers`` <= 1: compressed and written on the caller's thread. Why threads: per
    GiB of image, reading costs ~0.35 CPU-s, zstd ~0.4, SHA-256 + spool write ~0.4; in series
    that is ~3x a plain read. A writer error (byte cap, disk floor) ends the stream where it
    happened and is raised by the next write or by close().
    """

    def __init__(self, writer: ArtifactWriter, level: int, workers: int) -> None:
        import zstandard

        def compressor() -> Any:
            return zstandard.ZstdCompressor(level=level, write_checksum=True)

        self._seq: Sequencer[bytes] = Sequencer(
            None, writer.write, max(FRAMES_IN_FLIGHT, 2 * workers)
        )
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._pending: bytearray | None = None
        self._fill = 0
        self._empty = True
        self._closed = False
        self._inline = compressor() if workers <= 1 else None
        self._todo: queue.SimpleQueue[tuple[int, bytearray, int] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._work, args=(compressor(),), name=f"memory-zstd-{i}", daemon=True
            )
            for i in range(workers if workers > 1 else 0)
        ]
        for t in self._threads:
            t.start()

    def buffer(self) -> bytearray:
        """A FRAME-sized buffer to read into (recycled once its frame is compressed)."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return bytearray(FRAME)

    def write_owned(self, buf: bytearray, n: int) -> None:
        """Take ``buf[:n]`` without copying it: one frame, after what ``write`` holds."""
        self._check_open()
        if self._fill:
            self._flush()
        self._submit(buf, n)

    def write(self, data: memoryview) -> None:
        """Copy ``data`` in; each FRAME of it becomes a frame."""
        self._check_open()
        while data.nbytes:
            if self._pending is None:
                self._pending = self.buffer()
            n = min(len(self._pending) - self._fill, data.nbytes)
            self._pending[self._fill : self._fill + n] = data[:n]
            self._fill += n
            data = data[n:]
            if self._fill == len(self._pending):
                self._flush()

    def close(self) -> None:
        """Write what is held, wait for every frame; raise what the writer raised. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._seq.error is None and (self._fill or self._empty):
                self._flush()  # an empty stream still gets its (empty) frame: valid zstd
        finally:
            self._seq.end()
            for _ in self._threads:
                self._todo.put(None)
            for t in self._threads:
                t.join()
        self._raise_error()

    def _check_open(self) -> None:
        self._raise_error()
        if self._closed:
            raise ValueError("FrameWriter: write after close")

    def _raise_error(self) -> None:
        if self._seq.error is not None:
            raise self._seq.error

    def _flush(self) -> None:
        buf = self._pending if self._pending is not None else self.buffer()
        n, self._pending, self._fill = self._fill, None, 0
        self._submit(buf, n)

    def _submit(self, buf: bytearray, n: int) -> None:
        seq = self._seq.take()  # waits while FRAMES_IN_FLIGHT frames are not yet written
        if seq is None:
            self._raise_error()
            raise ValueError("FrameWriter: write after close")
        self._empty = False
        if self._inline is not None:
            self._compress(self._inline, seq, buf, n)
        else:
            self._todo.put((seq, buf, n))

    def _work(self, cctx: Any) -> None:
        # One compressor per thread: a ZstdCompressor must not be shared between threads.
        while (item := self._todo.get()) is not None:
            self._compress(cctx, *item)

    def _compress(self, cctx: Any, seq: int, buf: bytearray, n: int) -> None:
        try:
            frame: bytes = cctx.compress(memoryview(buf)[:n])
        except BaseException as exc:  # noqa: BLE001 - raised by the caller's thread
            self._seq.fail(exc, seq)
            return
        finally:
            self._free.put(buf)
        self._seq.finish(seq, frame)
