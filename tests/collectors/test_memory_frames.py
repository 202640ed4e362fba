"""Ordered zstd frames (collectors/memory_frames.py) and process_vm_readv reads (ProcessMemory):
the in-order writer under real threads, the streamed physical-image writer (round trip, sink cap,
bounded frames in flight), and real processes dumped on several threads compared byte for byte
with a one-thread dump through /proc/PID/mem."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from collectors import memory_frames
from collectors.memory_frames import FrameWriter, Sequencer
from dfir_ar import elfcore
from dfir_ar.collector import ByteCapReached, Outcome, Status
from dfir_ar.evidence.bundle import BundleWriter
from tests.conftest import require_root
from tests.evidence.helpers import read_members, seal

# 40 MiB of varied content (random, text, zero pages); the fixture then stops the process
# (SIGSTOP), so its memory does not change and two dumps of it are byte-identical.
BIG_CHILD = r"""
import os, sys, time
blocks = []
for i in range(40):
    kind = i % 3
    if kind == 0:
        blocks.append(bytearray(os.urandom(1 << 20)))
    elif kind == 1:
        blocks.append(bytearray((b"user=admin id=%d " % i) * 70000)[: 1 << 20])
    else:
        b = bytearray(1 << 20)
        b[::4096] = b"\x01" * len(b[::4096])
        blocks.append(b)
print("ready", flush=True)
time.sleep(120)
"""


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :][:1]


@pytest.fixture
def big_child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", BIG_CHILD], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        os.kill(proc.pid, signal.SIGSTOP)
        while _state(proc.pid) != "T":
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def layout_and_reference(pid: int) -> tuple[elfcore.CoreLayout, bytes]:
    """The core's layout, and the core dumped on one thread through /proc/PID/mem only."""
    info = elfcore.read_process_info(pid)
    maps = elfcore.read_maps(pid)
    resident = elfcore.read_resident(pid)
    sparse = elfcore.read_sparse(pid, maps, resident)
    layout = elfcore.plan_core(info, maps, resident=resident, sparse=sparse)
    out = io.BytesIO()
    report = elfcore.dump_core(
        pid, out.write, info=info, maps=maps, resident=resident, sparse=sparse, fast=False
    )
    assert report.complete and report.layout == layout
    return layout, out.getvalue()


def unzstd(packed: bytes) -> bytes:
    out = io.BytesIO()
    zstandard.ZstdDecompressor().copy_stream(io.BytesIO(packed), out)  # every frame
    return out.getvalue()


def parallel_dump(
    writer: BundleWriter, pid: int, layout: elfcore.CoreLayout, workers: int, **kw: object
) -> tuple[elfcore.DumpReport, bytes]:
    report = elfcore.DumpReport(pid=pid, layout=layout)
    with elfcore.ProcessMemory(pid) as mem, writer.artifact(f"{pid}-{workers}.core.zst",
                                                           "application/zstd") as art:
        memory_frames.dump(mem, report, art, level=-1, workers=workers, **kw)  # type: ignore[arg-type]
    result, check = seal(writer, Outcome(Status.OK))
    assert check.ok, check.problems
    packed = read_members(result.path)[f"artifacts/memory/{pid}-{workers}.core.zst"]
    return report, unzstd(packed)


def test_sequencer_writes_in_order_whatever_order_pieces_finish() -> None:
    written: list[int] = []
    busy = threading.Lock()

    def write(item: int) -> None:
        assert busy.acquire(blocking=False), "two writers at once"
        try:
            written.append(item)
            time.sleep(random.random() / 2000)
        finally:
            busy.release()

    seq: Sequencer[int] = Sequencer(400, write, window=6)
    taken: list[int] = []

    def work() -> None:
        while (n := seq.take()) is not None:
            taken.append(n)
            assert n - seq.written < 6  # never more than the window ahead of the writer
            time.sleep(random.random() / 1000)
            seq.finish(n, n)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert written == list(range(400)) and sorted(taken) == list(range(400))
    assert seq.written == 400 and not seq.stopped and seq.error is None


def test_sequencer_halt_keeps_the_pieces_before_it() -> None:
    written: list[int] = []
    seq: Sequencer[int] = Sequencer(10, written.append)
    for _ in range(6):
        seq.take()
    seq.finish(2, 2)  # finished out of order: held until 0 and 1 are written
    assert written == []
    seq.halt("process exited during the dump", 4)
    seq.finish(5, 5)  # after the end: dropped
    seq.finish(0, 0)
    assert written == [0]
    seq.finish(1, 1)
    seq.finish(3, 3)
    assert written == [0, 1, 2, 3]
    assert seq.take() is None and seq.stopped == "process exited during the dump"


def test_sequencer_write_error_ends_the_file_and_is_kept() -> None:
    written: list[int] = []

    def write(item: int) -> None:
        if item == 2:
            raise ByteCapReached("cap")
        written.append(item)

    seq: Sequencer[int] = Sequencer(10, write)
    for n in range(4):
        assert seq.take() == n
    for n in (3, 1, 2, 0):
        seq.finish(n, n)
    assert written == [0, 1] and isinstance(seq.error, ByteCapReached)
    assert seq.take() is None and seq.written == 2


def test_sequencer_should_stop_is_asked_before_each_take() -> None:
    seq: Sequencer[int] = Sequencer(10, lambda item: None)
    reasons = iter(["", "", "deadline reached"])
    got = [seq.take(lambda: next(reasons)) for _ in range(3)]
    assert got == [0, 1, None] and seq.stopped == "deadline reached"


@pytest.mark.parametrize("workers", [1, 3])
def test_parallel_dump_is_the_serial_dump_byte_for_byte(
    bundle_writer: Callable[..., BundleWriter], big_child: subprocess.Popen[bytes], workers: int
) -> None:
    require_root()
    pid = big_child.pid
    layout, reference = layout_and_reference(pid)
    report, core = parallel_dump(bundle_writer("memory"), pid, layout, workers)
    assert report.complete and not report.stopped and report.written == layout.size
    assert len(core) == layout.size == len(reference)
    assert core == reference


def test_process_vm_readv_and_proc_mem_agree_on_unreadable_pages(tmp_path: Path) -> None:
    require_root()
    # A file mapping three pages long over a file then cut to one page: the last two pages
    # cannot be read (past the file's end).
    data = tmp_path / "cut-file"
    data.write_bytes(b"Y" * 3 * 4096)
    child = subprocess.Popen(
        [sys.executable, "-c", "import mmap, sys, time\n"
         f"f = open({str(data)!r}, 'rb')\n"
         "m = mmap.mmap(f.fileno(), 3 * 4096, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED)\n"
         "print(flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()
        os.truncate(data, 4096)
        (m,) = [m for m in elfcore.read_maps(child.pid) if m.path == str(data)]
        got = {}
        for fast in (True, False):
            buf = bytearray(b"\xff" * m.size)
            with elfcore.ProcessMemory(child.pid, fast=fast) as mem:
                holes = mem.fill(m.start, m.size, buf)
            got[fast] = (bytes(buf), holes)
    finally:
        child.kill()
        child.wait()
    assert got[True] == got[False]
    image, holes = got[True]
    assert image == b"Y" * 4096 + bytes(2 * 4096)
    assert elfcore.merge_holes(holes) == [(m.start + 4096, m.end, "EIO")]


def test_a_process_that_exited_is_never_read_even_before_it_is_reaped() -> None:
    require_root()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (m,) = [m for m in elfcore.read_maps(child.pid) if m.path == "[stack]"]
        mem = elfcore.ProcessMemory(child.pid)
        buf = bytearray(4096)
        mem.fill(m.end - 4096, 4096, buf)
        os.kill(child.pid, signal.SIGKILL)
        while _state(child.pid) != "Z":
            time.sleep(0.01)  # a zombie: its pid is still taken, its memory is gone
        with pytest.raises(elfcore.ProcessGone):
            mem.fill(m.end - 4096, 4096, buf)
        mem.close()
    finally:
        child.kill()
        child.wait()


def test_process_killed_mid_parallel_dump_leaves_a_clean_prefix(
    bundle_writer: Callable[..., BundleWriter], big_child: subprocess.Popen[bytes]
) -> None:
    require_root()
    pid = big_child.pid
    layout, _ = layout_and_reference(pid)

    def progress(done: int, total: int) -> None:
        if done > 8 << 20 and big_child.poll() is None:
            big_child.kill()
            big_child.wait()

    report, core = parallel_dump(
        bundle_writer("memory"), pid, layout, 2, progress=progress, progress_every=1 << 20
    )
    assert report.stopped == "process exited during the dump" and not report.complete
    assert 8 << 20 < report.written < layout.size
    assert len(core) == report.written and core.startswith(layout.header)


def test_byte_cap_mid_parallel_dump_is_raised_with_what_was_stored(
    bundle_writer: Callable[..., BundleWriter], big_child: subprocess.Popen[bytes]
) -> None:
    require_root()
    pid = big_child.pid
    layout, _ = layout_and_reference(pid)
    writer = bundle_writer("memory", max_bytes=4 << 20)
    report = elfcore.DumpReport(pid=pid, layout=layout)
    with (
        elfcore.ProcessMemory(pid) as mem,
        writer.artifact("x.core.zst", "application/zstd") as art,
        pytest.raises(ByteCapReached),
    ):
        memory_frames.dump(mem, report, art, level=-1, workers=2)
    result, check = seal(writer, Outcome(Status.PARTIAL, "cap"))
    assert check.ok, check.problems
    packed = read_members(result.path)["artifacts/memory/x.core.zst"]
    core = unzstd(packed)
    assert len(core) == report.written and 0 < report.written < layout.size
    assert writer.bytes_written <= 4 << 20


@pytest.mark.parametrize("lent", [False, True])
@pytest.mark.parametrize("workers", [1, 2])
def test_frame_writer_surfaces_the_sink_cap(
    bundle_writer: Callable[..., BundleWriter], workers: int, lent: bool
) -> None:
    writer = bundle_writer("memory", max_bytes=256 * 1024)
    with writer.artifact("x.zst", "application/zstd") as art:
        z = FrameWriter(art, 1, workers)
        with pytest.raises(ByteCapReached):
            for _ in range(256):  # incompressible: the cap is crossed early
                if lent:
                    buf = z.buffer()
                    buf[: 1 << 20] = os.urandom(1 << 20)
                    z.write_owned(buf, 1 << 20)
                else:
                    z.write(memoryview(os.urandom(128 * 1024)))
        with pytest.raises(ByteCapReached):
            z.close()  # the stream cannot be finished: said again, not swallowed
        z.close()  # and then idempotent; the compressor threads are gone
        assert not [t for t in threading.enumerate() if t.name.startswith("memory-zstd")]
    assert writer.bytes_written <= 256 * 1024


def frames_of(packed: bytes) -> list[zstandard.FrameParameters]:
    """The parameters of each concatenated frame, walked one frame at a time."""
    frames = []
    while packed:
        frames.append(zstandard.get_frame_parameters(packed))
        dobj = zstandard.ZstdDecompressor().decompressobj()
        dobj.decompress(packed)
        packed = dobj.unused_data
    return frames


@pytest.mark.parametrize("workers", [1, 2])
def test_frame_writer_round_trips(
    bundle_writer: Callable[..., BundleWriter], workers: int
) -> None:
    data = b"".join(
        os.urandom(1 << 20) if i % 2 else bytes([i]) * (1 << 20) for i in range(21)
    ) + b"tail"
    writer = bundle_writer("memory")
    with writer.artifact("x.zst", "application/zstd") as art:
        z = FrameWriter(art, 1, workers)
        for off in range(0, len(data), 3 << 20):  # writes not aligned to frames
            z.write(memoryview(data)[off : off + (3 << 20)])
        z.close()
    result, report = seal(writer, Outcome(Status.OK))
    assert report.ok, report.problems
    packed = read_members(result.path)["artifacts/memory/x.zst"]
    assert unzstd(packed) == data
    frames = frames_of(packed)
    assert len(frames) == 3 and all(f.has_checksum for f in frames)


class SlowSink:
    """An artifact writer slower than the producer; notes which threads wrote, and how far the
    producer's frames ran ahead of it."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.threads: set[threading.Thread] = set()
        self.produced = 0
        self.writes = 0
        self.most_ahead = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self.threads.add(threading.current_thread())
        self.most_ahead = max(self.most_ahead, self.produced - self.writes)
        time.sleep(random.random() / 500)
        self.writes += 1
        return self.out.write(data)

    @property
    def size(self) -> int:
        return self.out.tell()


def test_frame_writer_of_nothing_is_one_empty_frame() -> None:
    sink = SlowSink()
    FrameWriter(sink, 1, 2).close()
    assert unzstd(sink.out.getvalue()) == b"" and len(frames_of(sink.out.getvalue())) == 1


def test_frame_writer_refuses_a_write_after_close() -> None:
    z = FrameWriter(SlowSink(), 1, 2)
    z.close()
    with pytest.raises(ValueError, match="after close"):
        z.write(memoryview(b"late"))
    with pytest.raises(ValueError, match="after close"):
        z.write_owned(z.buffer(), 4)


@pytest.mark.parametrize("workers", [1, 3])
def test_frame_writer_holds_a_bounded_window_in_order(workers: int) -> None:
    sink = SlowSink()
    z = FrameWriter(sink, 1, workers)
    lent: dict[int, bytearray] = {}
    expected = bytearray()
    for i in range(60):  # as lime.acquire does: a header copied in, then a lent buffer
        header = b"range %d;" % i
        buf = z.buffer()
        lent[id(buf)] = buf
        n = 4096 + 97 * i
        buf[:n] = bytes([i]) * n
        z.write(memoryview(header))
        z.write_owned(buf, n)  # two frames: the header held by write(), then buf
        sink.produced += 2
        expected += header + buf[:n]
    z.close()
    assert unzstd(sink.out.getvalue()) == expected
    assert len(frames_of(sink.out.getvalue())) == sink.writes == 120
    # The producer waited for the slow sink instead of piling frames up in memory: never more
    # than the window in flight; lent buffers come back once compressed.
    window = max(memory_frames.FRAMES_IN_FLIGHT, 2 * workers)
    assert sink.most_ahead <= window
    assert len(lent) <= window + 2
    if workers == 1:
        assert sink.threads == {threading.current_thread()}  # one thread does it all
    else:
        assert threading.current_thread() not in sink.threads
