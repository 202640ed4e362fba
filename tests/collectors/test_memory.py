"""Memory collector: real process dumps (readelf, gdb, bytes vs /proc/PID/mem), size cap, vanished
pids, processes talking to an address, and the physical LiME path on a synthetic kcore."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from collectors.memory import Memory, pids_talking_to
from dfir_ar import elfcore, lime
from dfir_ar.collector import CollectJob, CollectorContext, Status
from dfir_ar.evidence.bundle import BundleWriter
from dfir_ar.responder import Target
from dfir_ar.validate import parse_ip
from tests.conftest import require_root, require_tool
from tests.evidence.helpers import extract_artifact, read_members, seal

MARK_LEN = 1 << 20

# The child fills a 1 MiB buffer with a known pattern (built at run time, so the pattern is only in
# the heap) and reports the buffer's address and a marker it can be grepped for.
CHILD = r"""
import ctypes, sys, time
marker = sys.argv[1][::-1].encode()
buf = bytearray((marker + bytes(range(256)))[:64] * ({n} // 64))
addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
print(addr, flush=True)
time.sleep(120)
""".replace("{n}", str(MARK_LEN))


Child = tuple[subprocess.Popen[bytes], int, bytes]


@pytest.fixture
def child() -> Iterator[Child]:
    marker = f"YMDUMP{os.getpid()}{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, marker[::-1]], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        addr = int(proc.stdout.readline())
        yield proc, addr, marker.encode()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def make_job(args: list[str], *, srcip: str | None = None, timeout: float = 60.0) -> CollectJob:
    return CollectJob(
        target=Target(srcip=parse_ip(srcip) if srcip else None),
        options=Memory.parse_options(args),
        deadline=time.monotonic() + timeout,
        max_bytes=1 << 30,
    )


def collector(tmp_path: Path, **settings: object) -> Memory:
    return Memory(CollectorContext(state_dir=tmp_path / "state", settings=settings))


def unpack(bundle: Path, name: str, tmp_path: Path) -> Path:
    packed = extract_artifact(bundle, f"artifacts/memory/{name}", tmp_path / (name + ".tmp"))
    out = tmp_path / name.removesuffix(".zst")
    with open(packed, "rb") as src, open(out, "wb") as dst:
        zstandard.ZstdDecompressor().copy_stream(src, dst)
    return out


def loads_of(core: Path) -> list[tuple[int, int, int, int]]:
    """(offset, vaddr, filesz, memsz) of each PT_LOAD, parsed independently of dfir_ar."""
    data = core.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    out = []
    for i in range(phnum):
        p_type, _, off, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * i)
        if p_type == 1:
            out.append((off, vaddr, filesz, memsz))
    return out


def core_read(core: Path, addr: int, n: int) -> bytes:
    for off, vaddr, filesz, _ in loads_of(core):
        if vaddr <= addr and addr + n <= vaddr + filesz:
            with open(core, "rb") as f:
                f.seek(off + addr - vaddr)
                return f.read(n)
    raise AssertionError(f"0x{addr:x} not in any dumped segment")


def test_process_dump_opens_in_readelf_and_gdb(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter], child: Child
) -> None:
    require_root()
    require_tool("readelf")
    proc, addr, marker = child
    maps = elfcore.read_maps(proc.pid)
    writer = bundle_writer("memory")
    outcome = collector(tmp_path).collect(make_job(["--pid", str(proc.pid)]), writer)
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.OK, outcome.reason
    core = unpack(result.path, f"{proc.pid}.core.zst", tmp_path)

    # readelf: a core whose LOAD headers are exactly the process's maps, in order.
    out = subprocess.run(["readelf", "-lW", str(core)], capture_output=True, text=True, check=True)
    assert "Elf file type is CORE" in out.stdout
    vaddrs = [int(m, 16) for m in re.findall(r"^\s+LOAD\s+0x[0-9a-f]+ (0x[0-9a-f]+)", out.stdout, re.M)]
    starts = [m.start for m in maps]  # one LOAD per map (sparse maps may add split runs)
    assert [v for v in vaddrs if v in starts] == starts
    assert all(any(m.start <= v < m.end for m in maps) for v in vaddrs)
    full = subprocess.run(["readelf", "-a", "-W", str(core)], capture_output=True, text=True, check=False)
    assert full.returncode == 0 and "Error" not in full.stderr, full.stderr
    notes = subprocess.run(["readelf", "-n", str(core)], capture_output=True, text=True, check=True)
    for note in ("NT_PRSTATUS", "NT_PRPSINFO", "NT_FILE", "NT_AUXV"):
        assert note in notes.stdout

    # The bytes in the core are the bytes in the process (and the pattern the child wrote).
    expected = (marker + bytes(range(256)))[:64]
    assert core_read(core, addr, 64) == expected
    fd = os.open(f"/proc/{proc.pid}/mem", os.O_RDONLY)
    try:
        assert core_read(core, addr + 4096, 256) == os.pread(fd, 256, addr + 4096)
    finally:
        os.close(fd)
    assert core.stat().st_size == max(o + f for o, _, f, _ in loads_of(core))

    meta = json.loads(read_members(result.path)[f"artifacts/memory/{proc.pid}.json"])
    assert meta["complete"] and meta["pid"] == proc.pid
    assert any(o["reason"].startswith("kernel special mapping") for o in meta["omitted"])

    if os.path.exists("/usr/bin/gdb"):
        g = subprocess.run(
            ["gdb", "-batch", "-nx", "-ex", "info files", "-ex", f"x/s {addr}", "-ex", "info threads",
             "-c", str(core)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert "Local core dump file" in g.stdout, g.stdout + g.stderr
        assert marker.decode() in g.stdout, g.stdout + g.stderr
        # The child sleeps in a system call, so its pc/sp come from /proc/PID/task/TID/syscall.
        (thread,) = re.findall(rf"^\*\s+\d+\s+LWP {proc.pid}\s.*$", g.stdout, re.M)
        assert "0x0000000000000000 in" not in thread, g.stdout


def test_size_cap_keeps_a_wellformed_core_and_is_partial(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter], child: Child
) -> None:
    require_root()
    require_tool("readelf")
    proc, _, _ = child
    writer = bundle_writer("memory")
    outcome = collector(tmp_path).collect(make_job(["--pid", str(proc.pid), "--max-mb", "2"]), writer)
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.PARTIAL
    assert "size cap" in outcome.reason
    core = unpack(result.path, f"{proc.pid}.core.zst", tmp_path)
    assert core.stat().st_size <= 2 << 20
    loads = loads_of(core)
    assert len(loads) == len(elfcore.read_maps(proc.pid))
    assert any(f == 0 for _, _, f, _ in loads) and any(f > 0 for _, _, f, _ in loads)
    subprocess.run(["readelf", "-l", str(core)], capture_output=True, check=True)


def test_vanished_pid_is_reported_not_fatal(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter], child: Child
) -> None:
    require_root()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    proc, _, _ = child
    writer = bundle_writer("memory")
    job = make_job(["--pid", str(gone.pid), "--pid", str(proc.pid), "--max-mb", "1"])
    outcome = collector(tmp_path).collect(job, writer)
    _, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.PARTIAL
    assert f"pid {gone.pid} vanished" in outcome.reason
    assert outcome.details["vanished_pids"] == [gone.pid]
    assert [d["pid"] for d in outcome.details["dumps"]] == [proc.pid]


def test_processes_talking_to_srcip_are_dumped(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    require_root()
    # Any 127/8 address is loopback; a private one keeps other test servers out of the match.
    peer = f"127.{os.getpid() % 200 + 20}.{os.getpid() % 250 + 1}.9"
    with socket.socket() as srv:
        srv.bind((peer, 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        code = (
            "import socket, sys, time\n"
            f"s = socket.create_connection(({peer!r}, {port}))\n"
            "print('up', flush=True)\ntime.sleep(60)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"up"
            conn, _ = srv.accept()
            with conn:
                assert pids_talking_to(parse_ip(peer)) == [proc.pid]
                writer = bundle_writer("memory")
                outcome = collector(tmp_path).collect(
                    make_job(["--max-mb", "1"], srcip=peer), writer
                )
                result, report = seal(writer, outcome)
        finally:
            proc.kill()
            proc.wait()
    assert report.ok, report.problems
    assert outcome.details["srcip_pids"] == [proc.pid]
    assert f"artifacts/memory/{proc.pid}.core.zst" in read_members(result.path)


def test_nothing_to_collect_fails_clearly(tmp_path: Path, bundle_writer: Callable[..., BundleWriter]) -> None:
    outcome = collector(tmp_path).collect(make_job([]), bundle_writer("memory"))
    assert outcome.status is Status.FAILED
    assert "--pid" in outcome.reason


# -- physical memory ---------------------------------------------------------------------------

IOMEM = """\
00000000-00000fff : Reserved
00001000-0009efff : System RAM
0009f000-000fffff : Reserved
  000a0000-000bffff : PCI Bus 0000:00
00100000-005fffff : System RAM
  00200000-002fffff : Kernel code
00600000-006fffff : PCI Bus 0000:00
00700000-0087ffff : System RAM
"""
RAM = [(0x1000, 0x9F000), (0x100000, 0x600000), (0x700000, 0x880000)]


def build_kcore(path: Path, seed: int = 7) -> dict[int, bytes]:
    """A kcore-like ELF: a note, a vmalloc segment (p_paddr -1), and RAM split over 3 PT_LOADs
    whose p_vaddr is a direct-map address and p_paddr the physical one. Returns RAM contents."""
    import random

    rnd = random.Random(seed)
    ram = {lo: rnd.randbytes(hi - lo) for lo, hi in RAM}
    direct_map = 0xFFFF888000000000
    segs = [  # (paddr, data)
        (0xFFFFFFFFFFFFFFFF, rnd.randbytes(8192)),  # vmalloc: never RAM
        (0x1000, ram[0x1000]),
        (0x100000, ram[0x100000][:0x280000]),
        (0x380000, ram[0x100000][0x280000:]),
        (0x700000, ram[0x700000]),
    ]
    phnum = 1 + len(segs)
    offset = 0x1000
    phdrs = [struct.pack("<IIQQQQQQ", 4, 0, 64 + 56 * phnum, 0, 0, 0, 0, 0)]
    for paddr, data in segs:
        vaddr = 0xFFFFC90000000000 if paddr == 0xFFFFFFFFFFFFFFFF else direct_map + paddr
        phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, offset, vaddr, paddr, len(data), len(data), 4096))
        offset += len(data)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    with open(path, "wb") as f:
        f.write((ehdr + b"".join(phdrs)).ljust(0x1000, b"\0"))
        for _, data in segs:
            f.write(data)
    return ram


def coalesce(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def test_physical_lime_from_synthetic_kcore(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    kcore = tmp_path / "kcore"
    iomem = tmp_path / "iomem"
    iomem.write_text(IOMEM)
    ram = build_kcore(kcore)
    missing = tmp_path / "no-such-crash"
    mem = collector(tmp_path, physical_sources=[str(missing), str(kcore)], iomem=str(iomem))
    writer = bundle_writer("memory")
    outcome = mem.collect(make_job(["--physical"]), writer)
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.OK, outcome.reason
    image = unpack(result.path, "physical.lime.zst", tmp_path)
    with open(image, "rb") as f:
        reader = lime.LimeReader(f)
        # One LiME range per (RAM range x kcore segment) piece; together exactly System RAM.
        assert coalesce([(r.start, r.end + 1) for r in reader.ranges]) == RAM
        assert len(reader.ranges) == 4
        for lo, hi in RAM:
            assert reader.read(lo, hi - lo) == ram[lo]
        assert reader.read(0x37FFF0, 32) == ram[0x100000][0x27FFF0:0x280010]  # across segments
    info = json.loads(read_members(result.path)["artifacts/memory/physical.json"])
    assert info["source"] == str(kcore)
    assert info["tried"] == [f"{missing}: not present (kernel built without it)"]
    assert info["missing"] == []


def test_volatility3_lime_layer_reads_the_image(tmp_path: Path) -> None:
    """The issue's promise: "readable by Volatility 3's LiME layer" (volatility3 is a dev dep)."""
    pytest.importorskip("volatility3", reason="pip install volatility3 (a dev dependency)")
    from volatility3.framework import contexts  # type: ignore[import-untyped]
    from volatility3.framework.layers.lime import LimeLayer  # type: ignore[import-untyped]
    from volatility3.framework.layers.physical import FileLayer  # type: ignore[import-untyped]

    iomem = tmp_path / "iomem"
    iomem.write_text(IOMEM)
    ram = build_kcore(tmp_path / "kcore")
    image = tmp_path / "ram.lime"
    with open(image, "wb") as f:
        lime.acquire(f.write, lime.select_source([tmp_path / "kcore"], iomem))
    ctx = contexts.Context()
    ctx.config["base.location"] = image.as_uri()
    ctx.add_layer(FileLayer(ctx, "base", "base"))
    ctx.config["lime.base_layer"] = "base"
    ctx.add_layer(LimeLayer(ctx, "lime", "lime"))
    layer = ctx.layers["lime"]
    assert layer.minimum_address == RAM[0][0] and layer.maximum_address == RAM[-1][1] - 1
    for lo, hi in RAM:
        assert layer.read(lo, hi - lo) == ram[lo]


def test_physical_cap_ends_with_a_shorter_valid_range(tmp_path: Path) -> None:
    kcore = tmp_path / "kcore"
    iomem = tmp_path / "iomem"
    iomem.write_text(IOMEM)
    build_kcore(kcore)
    plan = lime.select_source([kcore], iomem)
    out = io.BytesIO()
    rep = lime.acquire(out.write, plan, max_bytes=0x200000)
    assert rep.stopped == "size cap" and not rep.complete
    out.seek(0)
    ranges = lime.read_lime_ranges(out)
    assert out.getbuffer().nbytes <= 0x200000
    assert ranges[0].start == 0x1000 and ranges[-1].start == 0x100000


def test_no_physical_source_names_every_source_tried(tmp_path: Path) -> None:
    iomem = tmp_path / "iomem"
    iomem.write_text(IOMEM)
    empty = tmp_path / "empty-device"
    empty.write_bytes(b"")
    notelf = tmp_path / "not-ram.elf"
    notelf.write_bytes(b"\x7fELF" + bytes([2, 1]) + bytes(58))
    sources = [tmp_path / "kcore", empty, notelf]
    with pytest.raises(lime.PhysicalSourceError) as err:
        lime.select_source(sources, iomem)
    msg = str(err.value)
    for src in sources:
        assert str(src) in msg
    assert "not present" in msg
    # On this host (no /proc/kcore, /dev/mem, /dev/crash) the defaults fail the same way.
    if not any(p.exists() for p in lime.DEFAULT_SOURCES):
        with pytest.raises(lime.PhysicalSourceError) as err:
            lime.select_source()
        for src in lime.DEFAULT_SOURCES:
            assert str(src) in str(err.value)


def test_physical_failure_is_a_failed_outcome(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    iomem = tmp_path / "iomem"
    iomem.write_text(IOMEM)
    mem = collector(tmp_path, physical_sources=[str(tmp_path / "kcore")], iomem=str(iomem))
    writer = bundle_writer("memory")
    outcome = mem.collect(make_job(["--physical"]), writer)
    _, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.FAILED
    assert str(tmp_path / "kcore") in outcome.reason


# -- pure parts --------------------------------------------------------------------------------

MAPS = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 131 /usr/bin/my prog (deleted)
55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 131 /usr/bin/my prog (deleted)
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000200000 rw-p 00000000 00:00 0
7f0000200000-7f0000201000 ---p 00000000 00:00 0
7ffd00000000-7ffd00002000 r--p 00000000 00:00 0 [vvar]
7ffd00010000-7ffd00030000 rw-p 00000000 00:00 0 [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
"""


def test_parse_maps_and_cap_priorities() -> None:
    maps = elfcore.parse_maps(MAPS)
    assert maps[0].path == "/usr/bin/my prog (deleted)" and maps[0].file_backed
    info = elfcore.ProcessInfo(pid=42, comm="x")
    full = elfcore.plan_core(info, maps, machine="x86_64", page_size=4096)
    reasons = {s.map.path or s.map.perms: s.omitted for s in full.segments if s.omitted}
    assert set(reasons) == {"---p", "[vvar]", "[vsyscall]"}
    # A cap that fits the heap and the stack but not the 2 MiB anonymous map or the file maps
    # keeps the heap/stack (anonymous rw first) and drops the rest, in address order.
    capped = elfcore.plan_core(
        info, maps, machine="x86_64", page_size=4096,
        max_bytes=len(full.header) + 0x100000 + 0x20000,
    )
    kept = [s.map.path for s in capped.segments if s.filesz]
    assert kept == ["[heap]", "[stack]"]
    assert capped.size == len(full.header) + 0x120000
    offsets = [s.file_offset for s in capped.segments if s.filesz]
    assert offsets == sorted(offsets) and offsets[0] == len(capped.header)


def test_map_ranges_reports_ram_no_segment_covers() -> None:
    ram = [lime.PhysRange(0x1000, 0x5000), lime.PhysRange(0x8000, 0x9000)]
    loads = [lime.ElfLoad(0x100, 0, 0x1000, 0x2000), lime.ElfLoad(0x9000, 0, 0x4000, 0x1000)]
    pieces, missing = lime.map_ranges(ram, loads)
    assert pieces == [lime.Piece(0x1000, 0x3000, 0x100), lime.Piece(0x4000, 0x5000, 0x9000)]
    assert missing == [lime.PhysRange(0x3000, 0x4000), lime.PhysRange(0x8000, 0x9000)]


def test_bundle_byte_cap_plans_a_smaller_core(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter], child: Child
) -> None:
    require_root()
    proc, _, _ = child
    writer = bundle_writer("memory", max_bytes=1 << 20)
    outcome = collector(tmp_path).collect(make_job(["--pid", str(proc.pid)]), writer)
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.PARTIAL and "size cap" in outcome.reason
    core = unpack(result.path, f"{proc.pid}.core.zst", tmp_path)
    assert core.stat().st_size <= 1 << 20


def test_process_exiting_mid_dump_stops_it_cleanly(child: Child) -> None:
    require_root()
    proc, _, _ = child
    calls = []

    def write(data: memoryview) -> None:
        calls.append(data.nbytes)
        if len(calls) == 2:  # header written, first data chunk in hand: the process dies
            proc.kill()
            proc.wait()

    report = elfcore.dump_core(proc.pid, write)
    assert report.stopped == "process exited during the dump"
    assert not report.complete
    assert report.written < report.layout.size


SPARSE_CHILD = r"""
import ctypes, mmap, sys, time
private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
big = mmap.mmap(-1, 1 << 30, flags=private)   # 1 GiB reserved, two pages written
big[:4] = b"YMT1"
big[(1 << 29) + 8192 : (1 << 29) + 8196] = b"YMT2"
idle = mmap.mmap(-1, 256 << 20, flags=private, prot=mmap.PROT_READ)  # never touched at all
a = ctypes.addressof(ctypes.c_char.from_buffer(big))
print(a, flush=True)
time.sleep(60)
"""


def test_untouched_memory_costs_nothing_and_reads_as_zeros(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    require_root()
    require_tool("gdb")
    proc = subprocess.Popen([sys.executable, "-c", SPARSE_CHILD], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        big = int(proc.stdout.readline())
        maps = elfcore.read_maps(proc.pid)
        (idle,) = [m for m in maps if m.size == 256 << 20 and m.perms.startswith("r--")]
        writer = bundle_writer("memory")
        outcome = collector(tmp_path).collect(make_job(["--pid", str(proc.pid)]), writer)
        result, report = seal(writer, outcome)
    finally:
        proc.kill()
        proc.wait()
    assert report.ok, report.problems
    assert outcome.status is Status.OK, outcome.reason
    core = unpack(result.path, f"{proc.pid}.core.zst", tmp_path)
    assert core.stat().st_size < 256 << 20  # 1.25 GiB of reservations cost (almost) nothing
    loads = loads_of(core)
    # The idle mapping: p_memsz without p_filesz, which ELF cores read as zeros.
    assert [(f, m) for _, v, f, m in loads if v == idle.start] == [(0, 256 << 20)]
    # The big one is split into runs: the two touched 2 MiB blocks carry data, the rest zeros.
    inside = [(v, f) for _, v, f, _ in loads if big <= v < big + (1 << 30)]
    assert len(inside) >= 3 and sum(f for _, f in inside) <= 8 << 20
    assert core_read(core, big, 4) == b"YMT1"
    assert core_read(core, big + (1 << 29) + 8192, 4) == b"YMT2"
    g = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", f"x/4xb {big + (1 << 28)}", "-c", str(core)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert "0x00\t0x00\t0x00\t0x00" in g.stdout, g.stdout + g.stderr
    meta = json.loads(read_members(result.path)[f"artifacts/memory/{proc.pid}.json"])
    assert any(o["start"] == hex(idle.start) and o["reason"].startswith("never touched")
               for o in meta["omitted"])


def test_touched_runs_from_pagemap_bits() -> None:
    page, per_block = 4096, elfcore.SPARSE_BLOCK // 4096
    start = 0x10000000  # the fake pagemap holds 8 bytes for every page below it too
    entries = [0] * (per_block * 5)
    entries[3] = 1 << 63  # present, block 0
    entries[per_block * 3 + 7] = 1 << 62  # swapped, block 3
    entries[per_block * 4 + 1] = 1 << 55  # soft-dirty only: not touched
    pagemap = io.BytesIO(bytes((start // page) * 8) + struct.pack(f"<{len(entries)}Q", *entries))
    runs = elfcore.touched_runs(pagemap, start, start + len(entries) * page, page)
    blk = elfcore.SPARSE_BLOCK
    assert runs == [
        (start, start + blk, True),
        (start + blk, start + 3 * blk, False),
        (start + 3 * blk, start + 4 * blk, True),
        (start + 4 * blk, start + 5 * blk, False),
    ]


@pytest.mark.parametrize("bad", ["²", "0", "-1", " 12", "1e3", "99999999", "12; id"])
def test_pid_values_parse_or_are_refused(bad: str) -> None:
    from collectors.memory import parse_pids
    from dfir_ar.errors import InvalidArgument

    assert parse_pids(["12", "12", "7"], "memory") == [12, 7]
    with pytest.raises(InvalidArgument, match="is not a process id"):
        parse_pids([bad], "memory")


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2 :][:1].decode()


def test_freeze_stops_the_process_for_the_dump_and_resumes_it(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    require_root()
    # A busy child: without --freeze it would be running ('R') while read.
    proc = subprocess.Popen(
        [sys.executable, "-c", "b = bytearray(1 << 20)\nwhile True:\n    b[0] = (b[0] + 1) % 256"]
    )
    try:
        seen: list[str] = []
        job = make_job(["--pid", str(proc.pid), "--freeze"])
        job.progress = lambda message, fraction: seen.append(_state(proc.pid))
        writer = bundle_writer("memory")
        outcome = collector(tmp_path).collect(job, writer)
        _, report = seal(writer, outcome)
        assert report.ok, report.problems
        assert outcome.status is Status.OK, outcome.reason
        assert seen and set(seen) == {"T"}  # stopped for the whole dump
        assert outcome.details["dumps"][0]["frozen"] is True
        for _ in range(200):  # SIGCONT is asynchronous too: poll, bounded
            if _state(proc.pid) != "T":
                break
            time.sleep(0.005)
        assert _state(proc.pid) in ("R", "S")  # and running again after it
    finally:
        proc.kill()
        proc.wait()
