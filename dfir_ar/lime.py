"""Physical memory in LiME format, read from /proc/kcore (or /dev/crash, /dev/mem) as AVML does.

LiME format (what Volatility 3's LimeLayer reads): for each physical range, a 32-byte header
``<IIQQQ`` = magic 0x4C694D45, version 1, start, end (INCLUSIVE), reserved 0, then the range's
bytes. Ranges are the top-level "System RAM" lines of /proc/iomem.

Sources, tried in order (all injectable, so tests can use a synthetic kcore):
- an ELF core (``/proc/kcore``): each PT_LOAD's ``p_paddr`` says which physical addresses it holds
  (the kernel sets it for its direct map of RAM); a RAM byte at physical P is read at
  ``p_offset + (P - p_paddr)``.
- a raw device (``/dev/crash``, ``/dev/mem``): the file offset is the physical address.
  CONFIG_STRICT_DEVMEM refuses RAM above 1 MiB on /dev/mem, so each source is probed first.
When none works the error names every source and why it failed.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from dfir_ar.errors import ExecutionError

LIME_MAGIC = 0x4C694D45
LIME_VERSION = 1
LIME_HEADER = struct.Struct("<IIQQQ")
DEFAULT_SOURCES = (Path("/proc/kcore"), Path("/dev/crash"), Path("/dev/mem"))
DEFAULT_IOMEM = Path("/proc/iomem")

_ELF_PHDR = struct.Struct("<IIQQQQQQ")
_PT_LOAD = 1
READ_CHUNK = 4 << 20
SPLIT = 256 << 20
"""Longest range per LiME header: a deadline stops between ranges, so the file stays valid."""


class BufferSink(Protocol):
    """A consumer that lends read buffers and takes them back full, so the bytes read are
    never copied before they are compressed (a memcpy of every byte costs about as much CPU as
    the read itself)."""

    def buffer(self) -> bytearray: ...

    def write_owned(self, buf: bytearray, n: int) -> None:
        """Take ``buf[:n]``; the sink owns ``buf`` from now on."""
        ...


class PhysicalSourceError(ExecutionError):
    """No physical memory source worked; the message lists each one tried and why."""


@dataclass(frozen=True, slots=True)
class PhysRange:
    """Physical range [start, end) (end EXCLUSIVE here; LiME headers store end - 1)."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Piece:
    """Physical [start, end) found at ``offset`` in the source file."""

    start: int
    end: int
    offset: int


def parse_iomem(text: str) -> list[PhysRange]:
    """Top-level "System RAM" ranges of /proc/iomem (indented lines are sub-resources)."""
    ranges = []
    for line in text.splitlines():
        if not line or line[0].isspace():
            continue
        span, sep, name = line.partition(" : ")
        if not sep or name.strip() != "System RAM":
            continue
        lo, _, hi = span.strip().partition("-")
        ranges.append(PhysRange(int(lo, 16), int(hi, 16) + 1))
    return ranges


@dataclass(frozen=True, slots=True)
class ElfLoad:
    offset: int
    vaddr: int
    paddr: int
    filesz: int


def read_elf_loads(f: BinaryIO) -> list[ElfLoad]:
    """PT_LOAD program headers of a 64-bit little-endian ELF file (what /proc/kcore is)."""
    f.seek(0)
    ehdr = f.read(64)
    if len(ehdr) < 64 or ehdr[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    if ehdr[4] != 2 or ehdr[5] != 1:
        raise ValueError("only 64-bit little-endian ELF cores are supported")
    (phoff,) = struct.unpack_from("<Q", ehdr, 32)
    phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
    if phentsize != _ELF_PHDR.size or phnum == 0:
        raise ValueError(f"unexpected program header table (entsize {phentsize}, count {phnum})")
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    loads = []
    for i in range(phnum):
        p_type, _, off, vaddr, paddr, filesz, _, _ = _ELF_PHDR.unpack_from(table, i * phentsize)
        if p_type == _PT_LOAD:
            loads.append(ElfLoad(off, vaddr, paddr, filesz))
    return loads


def map_ranges(
    ram: Sequence[PhysRange], loads: Sequence[ElfLoad]
) -> tuple[list[Piece], list[PhysRange]]:
    """Pure: where each RAM byte lives in the ELF source, and which RAM no segment covers.

    kcore marks non-RAM segments (vmalloc, modules) with p_paddr -1 (or 0); only segments whose
    physical span overlaps a RAM range are used, so those never match real RAM by accident.
    """
    spans = sorted(
        (ld.paddr, ld.paddr + ld.filesz, ld.offset)
        for ld in loads
        if ld.filesz and ld.paddr not in (0xFFFFFFFFFFFFFFFF,) and ld.paddr + ld.filesz < 1 << 64
    )
    pieces: list[Piece] = []
    missing: list[PhysRange] = []
    for r in ram:
        pos = r.start
        for lo, hi, off in spans:
            if hi <= pos or lo >= r.end:
                continue
            if lo > pos:
                missing.append(PhysRange(pos, lo))
                pos = lo
            end = min(hi, r.end)
            if end > pos:
                pieces.append(Piece(pos, end, off + (pos - lo)))
                pos = end
            if pos >= r.end:
                break
        if pos < r.end:
            missing.append(PhysRange(pos, r.end))
    return pieces, missing


@dataclass
class PhysicalReport:
    source: str = ""
    ranges: list[Piece] = field(default_factory=list)
    missing: list[PhysRange] = field(default_factory=list)
    unreadable: list[tuple[int, int, str]] = field(default_factory=list)
    """(physical start, end, error) written as zeros."""
    written: int = 0
    complete: bool = False
    stopped: str = ""
    tried: list[str] = field(default_factory=list)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "not present (kernel built without it)"
    if exc.errno in (errno.EPERM, errno.EACCES):
        return f"permission denied ({os.strerror(exc.errno)}; needs root, and lockdown off)"
    return exc.strerror or str(exc)


def plan_source(path: Path, ram: Sequence[PhysRange]) -> tuple[list[Piece], list[PhysRange]]:
    """Open ``path``, decide ELF vs raw device, and probe one byte of RAM; raise OSError/ValueError."""
    with open(path, "rb", buffering=0) as f:
        magic = f.read(4)
        if magic == b"\x7fELF":
            pieces, missing = map_ranges(ram, read_elf_loads(f))
            if not pieces:
                raise ValueError("no PT_LOAD segment maps System RAM (p_paddr not set)")
        else:
            pieces = [Piece(r.start, r.end, r.start) for r in ram]
            missing = []
        probe = next((p for p in pieces if p.start >= 1 << 20), pieces[0])
        got = os.pread(f.fileno(), 1, probe.offset)
        if len(got) != 1:
            raise ValueError(f"reading physical 0x{probe.start:x} returned nothing")
    return pieces, missing


def _split(pieces: Sequence[Piece], most: int) -> Iterator[Piece]:
    for p in pieces:
        for lo in range(p.start, p.end, most):
            yield Piece(lo, min(lo + most, p.end), p.offset + (lo - p.start))


@dataclass(frozen=True)
class SourcePlan:
    """The source that works and where each System RAM range is found in it."""

    source: Path
    pieces: tuple[Piece, ...]
    missing: tuple[PhysRange, ...]
    tried: tuple[str, ...]
    """Sources that failed before this one, each with its reason."""

    @property
    def image_size(self) -> int:
        return sum(LIME_HEADER.size + p.end - p.start for p in self.pieces)


def select_source(
    sources: Sequence[Path] = DEFAULT_SOURCES, iomem: Path = DEFAULT_IOMEM
) -> SourcePlan:
    """The first source that can be read, or PhysicalSourceError naming every one tried."""
    try:
        ram = parse_iomem(iomem.read_text(encoding="ascii", errors="replace"))
    except OSError as exc:
        raise PhysicalSourceError(f"cannot read {iomem}: {_why(exc)}") from None
    if not ram:
        raise PhysicalSourceError(f"{iomem} lists no System RAM ranges")
    if all(r.start == 0 for r in ram) and len(ram) > 1:
        raise PhysicalSourceError(f"{iomem} shows zeroed addresses: run as root")
    tried: list[str] = []
    for src in sources:
        try:
            pieces, missing = plan_source(src, ram)
        except OSError as exc:
            tried.append(f"{src}: {_why(exc)}")
            continue
        except ValueError as exc:
            tried.append(f"{src}: {exc}")
            continue
        return SourcePlan(src, tuple(pieces), tuple(missing), tuple(tried))
    raise PhysicalSourceError(
        "no physical memory source works on this host; tried: " + "; ".join(tried)
    )


def acquire(
    write: Callable[[memoryview], object],
    plan: SourcePlan,
    *,
    max_bytes: int | None = None,
    should_stop: Callable[[], str] = lambda: "",
    progress: Callable[[int, int], None] = lambda done, total: None,
    chunk: int = READ_CHUNK,
    lender: BufferSink | None = None,
) -> PhysicalReport:
    """Stream a LiME image of the planned System RAM ranges into ``write``. With ``lender``,
    RAM is read into its buffers and handed over without a copy (headers and zero-filled pages
    still go through ``write``, in file order)."""
    report = PhysicalReport(tried=list(plan.tried))
    src, pieces, missing = plan.source, plan.pieces, list(plan.missing)
    report.source = str(src)
    report.missing = missing
    total = plan.image_size
    buf = bytearray(0 if lender is not None else chunk)
    view = memoryview(buf)
    need_buffer = lender is not None  # a lent buffer is replaced only once it was handed over
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for part in _split(pieces, SPLIT):
            p = part
            size = p.end - p.start
            room = None if max_bytes is None else max_bytes - report.written - LIME_HEADER.size
            if room is not None and room < size:
                # A LiME header promises its whole range, so a capped image ends with a shorter
                # range (whole pages) instead of a header whose data never follows.
                size = room // 4096 * 4096
                report.stopped = "size cap"
                if size <= 0:
                    return report
                p = Piece(p.start, p.start + size, p.offset)
            reason = should_stop()
            if reason:
                report.stopped = reason
                return report
            write(memoryview(LIME_HEADER.pack(LIME_MAGIC, LIME_VERSION, p.start, p.end - 1, 0)))
            report.written += LIME_HEADER.size
            report.ranges.append(p)
            done = 0
            while done < size:
                if lender is not None and need_buffer:
                    buf = lender.buffer()
                    view = memoryview(buf)
                    need_buffer = False
                want = min(len(buf), size - done)
                try:
                    got = os.preadv(fd, [view[:want]], p.offset + done)
                except OSError as exc:
                    got, why = 0, exc.strerror or str(exc)
                else:
                    why = "short read"
                if got <= 0:
                    # Keep the LiME range's length honest: zero-fill a page and record it.
                    got = min(4096, size - done)
                    report.unreadable.append((p.start + done, p.start + done + got, why))
                    write(memoryview(bytes(got)))
                elif lender is not None:
                    lender.write_owned(buf, got)
                    need_buffer = True
                else:
                    write(view[:got])
                done += got
                report.written += got
                progress(report.written, total)
            if report.stopped:
                return report
        report.complete = True
        return report
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class LimeRange:
    start: int
    end: int
    """INCLUSIVE, as stored."""
    data_offset: int


def read_lime_ranges(f: BinaryIO) -> list[LimeRange]:
    """Walk a LiME file's headers (what Volatility's LimeLayer does); ValueError if malformed."""
    ranges = []
    f.seek(0, os.SEEK_END)
    size = f.tell()
    pos = 0
    while pos < size:
        f.seek(pos)
        raw = f.read(LIME_HEADER.size)
        if len(raw) != LIME_HEADER.size:
            raise ValueError(f"truncated LiME header at offset {pos}")
        magic, version, start, end, _ = LIME_HEADER.unpack(raw)
        if magic != LIME_MAGIC or version != LIME_VERSION:
            raise ValueError(f"bad LiME magic/version at offset {pos}")
        if end < start:
            raise ValueError(f"LiME range end < start at offset {pos}")
        data = pos + LIME_HEADER.size
        if data + end - start + 1 > size:
            raise ValueError(f"LiME range 0x{start:x}-0x{end:x} runs past the end of the file")
        ranges.append(LimeRange(start, end, data))
        pos = data + end - start + 1
    return ranges


class LimeReader:
    """Read physical addresses back from a LiME file."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.ranges = read_lime_ranges(f)

    def read(self, phys: int, length: int) -> bytes:
        """Bytes at physical ``phys``; may span adjacent ranges. KeyError on a gap."""
        out = bytearray()
        pos = phys
        while len(out) < length:
            r = next((r for r in self.ranges if r.start <= pos <= r.end), None)
            if r is None:
                raise KeyError(f"physical 0x{pos:x} is not inside a captured range")
            n = min(length - len(out), r.end - pos + 1)
            self._f.seek(r.data_offset + pos - r.start)
            out += self._f.read(n)
            pos += n
        return bytes(out)

    def iter_ranges(self) -> Iterator[LimeRange]:
        return iter(self.ranges)
