"""Write a live process's memory as an ELF core file (ET_CORE) that readelf and gdb open.

Why not gcore/ptrace: gcore needs gdb on the host and stops the process for the whole dump; this
reads ``/proc/PID/mem`` map by map (2+ GB/s as root) without stopping it. The trade-off is that
the image is not frozen: pages may change while they are read (recorded in the metadata).

Layout (computed from ``/proc/PID/maps`` *before* any data is read, because the program headers
carry file offsets):

    ELF header | PT_NOTE + one PT_LOAD per mapping | notes | pad to page | data of each PT_LOAD

Notes, as the kernel writes them for a crash dump: NT_PRSTATUS (pid/ppid/pgrp/sid; registers are
zero because we never attach), NT_PRPSINFO (state, comm, argv), NT_AUXV, NT_FILE (the file-backed
mappings, which gdb uses to find the executable and libraries).

A mapping gets ``p_filesz = 0`` (present in the headers, no data) when it is not readable, when it
is a kernel special mapping ([vvar], [vsyscall]) or a device mapping (reading /dev/* mappings can
have side effects, and the kernel's own core dumper skips VM_IO too), or when the size cap leaves
no room for it. Under a cap, anonymous writable memory (heap, stacks, what an attacker injected)
is kept first and read-only file mappings (recoverable from disk) are dropped first.
Untouched memory is never read: a private anonymous mapping with nothing resident or swapped
(smaps) is a PT_LOAD with p_memsz and no p_filesz, which ELF readers take as zeros; a large one
that is mostly untouched is split into runs of 2 MiB blocks by /proc/PID/pagemap, so a 64 GiB
arena with 100 MiB in use costs 100 MiB. Shared anonymous mappings are read whole (their pages
may live in shmem without being mapped here).
Pages that fail to read at dump time (EIO, e.g. a file mapping past its file's end) are written as
zeros and reported, so every offset in the headers stays true.

Bytes are read with process_vm_readv(2) where it works (ProcessMemory): it copies straight from
the target's pages into our buffer, where a read of /proc/PID/mem copies every page twice (into a
kernel page, then out to us): 0.22 against 0.34 CPU-s/GiB here.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import select
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from dfir_ar.errors import ExecutionError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
PF_X, PF_W, PF_R = 1, 2, 4
PN_XNUM = 0xFFFF
NT_PRSTATUS = 1
NT_PRPSINFO = 3
NT_AUXV = 6
NT_FILE = 0x46494C45

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_NOTE_HDR = struct.Struct("<III")

# e_machine, sizeof(elf_gregset_t), and the sp / pc slots in it, per architecture (the rest of
# the prstatus layout is shared). x86_64 user_regs_struct: rip is #16, rsp #19; aarch64: sp #31,
# pc #32.
_MACHINES: dict[str, tuple[int, int, int, int]] = {
    "x86_64": (62, 27 * 8, 19, 16),
    "aarch64": (183, 34 * 8, 31, 32),
}

_SPECIAL = frozenset({"[vvar]", "[vvar_vclock]", "[vsyscall]"})
# /dev mappings that are ordinary memory, not device registers.
_DEV_OK = ("/dev/zero", "/dev/shm/")

READ_CHUNK = 1 << 20
"""Bytes per read (and per zstd frame of a dumped core): 1 MiB stays in a core's L2 cache, so
the compressor that follows reads it from cache (4-8 MiB pieces cost 0.04-0.3 CPU-s/GiB more)."""


@dataclass(frozen=True, slots=True)
class MemoryMap:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def readable(self) -> bool:
        return self.perms[:1] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1:2] == "w"

    @property
    def file_backed(self) -> bool:
        return self.inode != 0 and self.path.startswith("/")

    @property
    def flags(self) -> int:
        return (
            (PF_R if self.readable else 0)
            | (PF_W if self.writable else 0)
            | (PF_X if self.perms[2:3] == "x" else 0)
        )


def parse_maps(text: str) -> list[MemoryMap]:
    """Parse /proc/PID/maps. Path names may contain spaces (and end in " (deleted)")."""
    maps = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        start_s, _, end_s = parts[0].partition("-")
        maps.append(
            MemoryMap(
                start=int(start_s, 16),
                end=int(end_s, 16),
                perms=parts[1],
                offset=int(parts[2], 16),
                dev=parts[3],
                inode=int(parts[4]),
                path=parts[5].strip() if len(parts) > 5 else "",
            )
        )
    return maps


def parse_smaps_resident(text: str) -> dict[int, int]:
    """Start address -> resident + swapped bytes of each mapping in /proc/PID/smaps."""
    out: dict[int, int] = {}
    start = -1
    for line in text.splitlines():
        head = line.split(maxsplit=1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            start = int(head.partition("-")[0], 16)
            out[start] = 0
        elif head in ("Rss:", "Swap:") and start >= 0:
            out[start] += int(line.split()[1]) * 1024
    return out


UNTOUCHED = "never touched (reads as zeros)"


def never_touched(m: MemoryMap, resident: Mapping[int, int] | None) -> bool:
    """A private anonymous mapping with nothing resident or swapped reads as zeros only, so it is
    dumped as p_memsz without p_filesz (how ELF cores say "zeros"), not read. Huge reservations
    (Go arenas, sanitizer shadows) then cost nothing. Shared mappings are always read: their
    pages may live in shmem without being mapped here."""
    if resident is None or m.file_backed or m.perms[3:4] != "p":
        return False
    return resident.get(m.start, 1) == 0


def skip_reason(m: MemoryMap) -> str:
    """Why a mapping's bytes are never read ('' when they are)."""
    if not m.readable:
        return f"not readable (perms {m.perms})"
    if m.path in _SPECIAL:
        return f"kernel special mapping {m.path}"
    if m.path.startswith("/dev/") and not m.path.startswith(_DEV_OK):
        return "device mapping (reading may have side effects)"
    if m.start >= 1 << 63:
        return "address beyond the range /proc/PID/mem can seek to"
    return ""


def keep_priority(m: MemoryMap) -> int:
    """Lower is kept first under a size cap: what only exists in memory beats what is on disk."""
    if m.writable and not m.file_backed:
        return 0  # heap, stacks, anonymous rw (injected code lives here)
    if m.writable:
        return 1  # a library's .data/.bss
    if not m.file_backed:
        return 2  # anonymous read-only / rx (JIT code)
    return 3  # read-only file mappings: the same bytes are in the file


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What the notes need; read with read_process_info()."""

    pid: int
    ppid: int = 0
    pgrp: int = 0
    sid: int = 0
    uid: int = 0
    gid: int = 0
    state: str = "R"
    comm: str = ""
    argv: tuple[str, ...] = ()
    auxv: bytes = b""
    nice: int = 0
    threads: tuple[int, ...] = ()
    """Thread ids (/proc/PID/task); each gets an NT_PRSTATUS so gdb lists every thread."""
    sp_pc: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    """Stack pointer and program counter of each thread blocked in a system call, from
    /proc/PID/task/TID/syscall (no ptrace needed): enough for gdb to start a backtrace."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One PT_LOAD: all of a mapping, or one run of a sparse mapping split by touched blocks.
    ``filesz`` is 0 (with ``omitted`` saying why) or the segment's whole size."""

    map: MemoryMap
    start: int
    end: int
    file_offset: int
    filesz: int
    omitted: str = ""

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class CoreLayout:
    header: bytes
    """ELF header, program headers, notes, padding: the first ``len(header)`` bytes of the file."""
    segments: tuple[Segment, ...]
    size: int
    """Final file size in bytes."""

    @property
    def data_bytes(self) -> int:
        return sum(s.filesz for s in self.segments)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name_z = name + b"\0"
    return (
        _NOTE_HDR.pack(len(name_z), len(desc), ntype)
        + name_z.ljust(_align(len(name_z), 4), b"\0")
        + desc.ljust(_align(len(desc), 4), b"\0")
    )


def _prstatus(info: ProcessInfo, arch: tuple[int, int, int, int], tid: int) -> bytes:
    # struct elf_prstatus: siginfo(12) cursig(2)+pad, sigpend, sighold, pid, ppid, pgrp, sid,
    # 4 timevals, pr_reg, pr_fpvalid; total rounded to 8.
    _, gregset, sp_slot, pc_slot = arch
    head = struct.pack("<iiih2xQQiiii", 0, 0, 0, 0, 0, 0, tid, info.ppid, info.pgrp, info.sid)
    regs = bytearray(gregset)
    if tid in info.sp_pc:
        sp, pc = info.sp_pc[tid]
        struct.pack_into("<Q", regs, sp_slot * 8, sp)
        struct.pack_into("<Q", regs, pc_slot * 8, pc)
    body = head + bytes(4 * 16) + bytes(regs) + struct.pack("<i", 0)
    return body.ljust(_align(len(body), 8), b"\0")


def _prpsinfo(info: ProcessInfo) -> bytes:
    state_char = info.state[:1].encode("ascii", "replace") or b"R"
    states = "RSDTZW"
    state_num = states.index(info.state[:1]) if info.state[:1] in states else 0
    zomb = 1 if state_char == b"Z" else 0
    psargs = " ".join(info.argv).encode("utf-8", "replace")[:79]
    return struct.pack(
        "<bcbb4xQIIiiii16s80s",
        state_num,
        state_char,
        zomb,
        max(-128, min(127, info.nice)),
        0,
        info.uid & 0xFFFFFFFF,
        info.gid & 0xFFFFFFFF,
        info.pid,
        info.ppid,
        info.pgrp,
        info.sid,
        info.comm.encode("utf-8", "replace")[:15],
        psargs,
    )


def _nt_file(maps: Iterable[MemoryMap], page_size: int) -> bytes:
    files = [m for m in maps if m.file_backed]
    out = [struct.pack("<QQ", len(files), page_size)]
    out += [struct.pack("<QQQ", m.start, m.end, m.offset // page_size) for m in files]
    out += [m.path.encode("utf-8", "surrogateescape") + b"\0" for m in files]
    return b"".join(out)


def plan_core(
    info: ProcessInfo,
    maps: Sequence[MemoryMap],
    *,
    max_bytes: int | None = None,
    machine: str | None = None,
    page_size: int = PAGE_SIZE,
    resident: Mapping[int, int] | None = None,
    sparse: Mapping[int, Sequence[tuple[int, int, bool]]] | None = None,
) -> CoreLayout:
    """Compute the whole core file layout: pure, no I/O, so the cap logic is testable.

    ``resident``: bytes resident or swapped per mapping start (smaps); ``sparse``: for large,
    mostly untouched mappings, (start, end, touched) runs covering the mapping (pagemap).
    """
    arch = machine or platform.machine()
    if arch not in _MACHINES:
        raise ExecutionError(f"ELF core dumps are not implemented for {arch} (x86_64, aarch64)")
    machine_info = _MACHINES[arch]
    e_machine = machine_info[0]
    # The main thread's NT_PRSTATUS comes first (gdb takes it as the current thread).
    tids = [info.pid, *(t for t in info.threads if t != info.pid)]
    notes = b"".join(
        (
            *(_note(b"CORE", NT_PRSTATUS, _prstatus(info, machine_info, tid)) for tid in tids),
            _note(b"CORE", NT_PRPSINFO, _prpsinfo(info)),
            *((_note(b"CORE", NT_AUXV, info.auxv),) if info.auxv else ()),
            _note(b"CORE", NT_FILE, _nt_file(maps, page_size)),
        )
    )
    # (map, start, end, reason not to read it) for every PT_LOAD to be.
    pieces: list[tuple[MemoryMap, int, int, str]] = []
    for m in maps:
        split = (sparse or {}).get(m.start)
        reason = skip_reason(m)
        if split and not reason:
            pieces += [(m, lo, hi, "" if hot else UNTOUCHED) for lo, hi, hot in split]
        else:
            pieces.append(
                (m, m.start, m.end, reason or (UNTOUCHED if never_touched(m, resident) else ""))
            )
    phnum = 1 + len(pieces)
    extended = phnum >= PN_XNUM
    ph_end = _EHDR.size + phnum * _PHDR.size
    sh_off = ph_end if extended else 0
    notes_off = ph_end + (_SHDR.size if extended else 0)
    data_start = _align(notes_off + len(notes), page_size)

    budget = None if max_bytes is None else max(0, max_bytes - data_start)
    chosen: set[int] = set()
    omitted: dict[int, str] = {}
    order = sorted(range(len(pieces)), key=lambda i: (keep_priority(pieces[i][0]), pieces[i][1]))
    for i in order:
        m, lo, hi, reason = pieces[i]
        if reason:
            omitted[i] = reason
        elif budget is not None and hi - lo > budget:
            omitted[i] = "size cap"
        else:
            chosen.add(i)
            if budget is not None:
                budget -= hi - lo

    segments = []
    offset = data_start
    for i, (m, lo, hi, _) in enumerate(pieces):
        if i in chosen:
            segments.append(Segment(m, lo, hi, offset, hi - lo))
            offset += hi - lo
        else:
            segments.append(Segment(m, lo, hi, offset, 0, omitted[i]))

    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = _EHDR.pack(
        ident, ET_CORE, e_machine, 1, 0, _EHDR.size, sh_off, 0, _EHDR.size, _PHDR.size,
        PN_XNUM if extended else phnum, _SHDR.size if extended else 0, 1 if extended else 0, 0,
    )
    phdrs = [_PHDR.pack(PT_NOTE, 0, notes_off, 0, 0, len(notes), 0, 4)]
    phdrs += [
        _PHDR.pack(PT_LOAD, s.map.flags, s.file_offset, s.start, 0, s.filesz, s.size, page_size)
        for s in segments
    ]
    # With PN_XNUM the real count lives in section header 0's sh_info (as the kernel does).
    shdr = _SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum, 0, 0) if extended else b""
    header = (ehdr + b"".join(phdrs) + shdr + notes).ljust(data_start, b"\0")
    return CoreLayout(header=header, segments=tuple(segments), size=offset)


def _status_fields(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def read_process_info(pid: int) -> ProcessInfo:
    """Read the note contents from /proc; raises ProcessLookupError if the pid is gone."""
    try:
        status = _status_fields(pid)
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = tuple(a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a)
        try:
            with open(f"/proc/{pid}/auxv", "rb") as f:
                auxv = f.read()
        except OSError:
            auxv = b""
        try:
            threads = tuple(sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit()))
        except OSError:
            threads = ()
        sp_pc = {tid: regs for tid in threads if (regs := _blocked_sp_pc(pid, tid)) is not None}
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    # comm may contain ')' and spaces: the fields after it start at the LAST ')'.
    rest = stat[stat.rfind(")") + 2 :].split()
    return ProcessInfo(
        pid=pid,
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        sid=int(rest[3]),
        uid=int(status.get("Uid", "0").split()[0]),
        gid=int(status.get("Gid", "0").split()[0]),
        state=rest[0],
        comm=stat[stat.find("(") + 1 : stat.rfind(")")],
        argv=argv,
        auxv=auxv,
        nice=int(rest[16]),
        threads=threads,
        sp_pc=sp_pc,
    )


def _blocked_sp_pc(pid: int, tid: int) -> tuple[int, int] | None:
    """(sp, pc) from /proc/PID/task/TID/syscall: "nr args*6 sp pc" while in a system call,
    "running" or "-1 sp pc" otherwise (the latter is still a valid user sp/pc)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) < 3 or fields[0] == b"running":
        return None
    try:
        return int(fields[-2], 16), int(fields[-1], 16)
    except ValueError:
        return None


def read_resident(pid: int) -> dict[int, int] | None:
    """Resident + swapped bytes per mapping from /proc/PID/smaps (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as f:
            return parse_smaps_resident(f.read())
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    except OSError:
        return None


SPARSE_MIN = 16 << 20
"""Private anonymous mappings at least this big, less than half resident, are split by pagemap."""
SPARSE_MAX = 64 << 30
"""...and at most this big: pagemap costs 8 bytes per page to read (a 16 TiB sanitizer shadow
would mean 32 GiB of pagemap); larger ones stay whole and the size cap deals with them."""
SPARSE_BLOCK = 2 << 20
# /proc/PID/pagemap: one little-endian u64 per page; bit 63 present, bit 62 swapped. The high
# byte of each entry (every 8th byte, offset 7) carries both: map it to 1 when either is set.
_TOUCHED = bytes(1 if b & 0xC0 else 0 for b in range(256))


def touched_runs(
    pagemap: BinaryIO, start: int, end: int, page_size: int = PAGE_SIZE
) -> list[tuple[int, int, bool]]:
    """(start, end, touched) runs of SPARSE_BLOCK blocks covering [start, end): a block is
    touched when any of its pages is present or swapped."""
    per_block = SPARSE_BLOCK // page_size
    runs: list[tuple[int, int, bool]] = []
    batch = per_block * 64
    first = start // page_size
    npages = (end - start) // page_size
    for i in range(0, npages, batch):
        n = min(batch, npages - i)
        pagemap.seek((first + i) * 8)
        flags = pagemap.read(n * 8)[7::8].translate(_TOUCHED)
        for j in range(0, n, per_block):
            hot = b"\x01" in flags[j : j + per_block]
            lo = start + (i + j) * page_size
            hi = min(end, lo + per_block * page_size)
            if runs and runs[-1][2] == hot and runs[-1][1] == lo:
                runs[-1] = (runs[-1][0], hi, hot)
            else:
                runs.append((lo, hi, hot))
    return runs


def read_sparse(
    pid: int, maps: Sequence[MemoryMap], resident: Mapping[int, int] | None
) -> dict[int, list[tuple[int, int, bool]]]:
    """Touched runs of the large, mostly untouched private anonymous mappings (pagemap)."""
    if resident is None:
        return {}
    wanted = [
        m for m in maps
        if not m.file_backed and m.perms[3:4] == "p" and not skip_reason(m)
        and SPARSE_MIN <= m.size <= SPARSE_MAX and 0 < resident.get(m.start, m.size) < m.size // 2
    ]
    if not wanted:
        return {}
    out: dict[int, list[tuple[int, int, bool]]] = {}
    try:
        with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
            for m in wanted:
                runs = touched_runs(f, m.start, m.end)
                if len(runs) > 1:
                    out[m.start] = runs
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    except OSError:
        return {}  # pagemap unreadable: read the mappings whole
    return out


def read_maps(pid: int) -> list[MemoryMap]:
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            return parse_maps(f.read())
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


@dataclass
class DumpReport:
    pid: int
    layout: CoreLayout
    written: int = 0
    complete: bool = False
    stopped: str = ""
    """Why the dump stopped early (deadline, cancel, byte cap), '' when complete."""
    unreadable: list[tuple[int, int, str]] = field(default_factory=list)
    """(start, end, error) ranges written as zeros."""


Writer = Callable[[memoryview], object]
Hole = tuple[int, int, str]
"""(start, end, error): an unreadable range written as zeros."""


def core_chunks(layout: CoreLayout, chunk: int = READ_CHUNK) -> list[tuple[int, int]]:
    """(address, size) of every read the core's data needs, in file order: each kept segment
    cut into ``chunk``-sized pieces, so the file is header + these pieces back to back."""
    out: list[tuple[int, int]] = []
    for seg in layout.segments:
        end = seg.start + seg.filesz
        out += [(pos, min(chunk, end - pos)) for pos in range(seg.start, end, chunk)]
    return out


def merge_holes(holes: Iterable[Hole]) -> list[Hole]:
    """Join adjacent holes with the same error (pieces read apart report them apart)."""
    out: list[Hole] = []
    for lo, hi, why in holes:
        if out and out[-1][1] == lo and out[-1][2] == why:
            out[-1] = (out[-1][0], hi, why)
        else:
            out.append((lo, hi, why))
    return out


class ProcessGone(Exception):
    """The process exited while it was being dumped."""


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _process_vm_readv() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).process_vm_readv
    except (AttributeError, OSError):
        return None
    iov = ctypes.POINTER(_IoVec)
    fn.argtypes = [ctypes.c_int, iov, ctypes.c_ulong, iov, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_ssize_t
    read: Callable[..., int] = fn
    return read


_VM_READV = _process_vm_readv()
_ZEROS = bytes(PAGE_SIZE)


class ProcessMemory:
    """Reads ranges of one process's memory; ``fill`` may run on several threads at once.

    process_vm_readv first (one copy; ctypes drops the GIL for the call). It names the process
    by pid, so the pidfd taken at open is polled after every such read: once the process has
    exited (before its pid can be reused) the read raises ProcessGone and its bytes are never
    used. What it cannot read is read through /proc/PID/mem (bound to the process at open);
    what that cannot read either is zero-filled page by page and reported. ENOSYS/EPERM turn
    process_vm_readv off for good (seccomp, old kernels); ``fast=False`` never uses it.
    """

    def __init__(self, pid: int, *, fast: bool = True) -> None:
        self.pid = pid
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        self._fast = fast and _VM_READV is not None
        self._pidfd = -1
        self._polls = threading.local()  # a poll object must not be shared between threads
        if self._fast:
            try:
                self._pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                os.close(self._fd)
                raise
            except OSError:
                self._fast = False

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exited(self) -> bool:
        poll: select.poll | None = getattr(self._polls, "poll", None)
        if poll is None:
            poll = self._polls.poll = select.poll()
            poll.register(self._pidfd, select.POLLIN)
        return bool(poll.poll(0))

    def _vm_read(self, buf: bytearray, off: int, n: int, addr: int) -> int:
        """process_vm_readv of ``n`` bytes at ``addr`` into ``buf[off:]``; 0 when it failed."""
        assert _VM_READV is not None
        target = (ctypes.c_char * n).from_buffer(buf, off)
        local, remote = _IoVec(ctypes.addressof(target), n), _IoVec(addr, n)
        got = _VM_READV(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        del target  # drop the buffer export at once
        if self._exited():
            raise ProcessGone
        if got < 0:
            if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
                self._fast = False
            return 0
        return got

    def fill(self, addr: int, size: int, buf: bytearray) -> list[Hole]:
        """Put [addr, addr+size) into ``buf[:size]``, zeros where unreadable; the holes."""
        view = memoryview(buf)
        holes: list[Hole] = []
        off = 0
        while off < size:
            pos, want = addr + off, size - off
            got = self._vm_read(buf, off, want, pos) if self._fast else 0
            err: OSError | None = None
            if got <= 0:
                try:
                    got = os.preadv(self._fd, [view[off:size]], pos)
                except OSError as exc:
                    got, err = 0, exc
            if got > 0:
                off += got
                continue
            # A hole (EIO on a page past a file's end, or a mapping torn down meanwhile): zero
            # one page and go on, so the rest is still captured at its true offset.
            step = min(PAGE_SIZE - pos % PAGE_SIZE, want)
            why = errno.errorcode.get(err.errno, str(err)) if err and err.errno else "short read"
            if holes and holes[-1][1] == pos and holes[-1][2] == why:
                holes[-1] = (holes[-1][0], pos + step, why)
            else:
                # A new hole: if the process is gone, every later read fails too; stop instead
                # of zero-filling the rest page by page (the pidfd, when there is one, cannot be
                # fooled by the pid's reuse).
                gone = self._exited() if self._pidfd >= 0 else not os.path.exists(f"/proc/{self.pid}")
                if gone:
                    raise ProcessGone
                holes.append((pos, pos + step, why))
            view[off : off + step] = _ZEROS[:step]
            off += step
        return holes


def dump_core(
    pid: int,
    write: Writer,
    *,
    max_bytes: int | None = None,
    should_stop: Callable[[], str] = lambda: "",
    progress: Callable[[int, int], None] = lambda done, total: None,
    chunk: int = READ_CHUNK,
    info: ProcessInfo | None = None,
    maps: Sequence[MemoryMap] | None = None,
    resident: Mapping[int, int] | None = None,
    sparse: Mapping[int, Sequence[tuple[int, int, bool]]] | None = None,
    fast: bool = True,
) -> DumpReport:
    """Stream ``pid``'s core file into ``write``, on this thread. ``should_stop`` returns a
    reason to stop or ''. The memory collector runs the same reads on several threads
    (collectors/memory_frames.py); this one-thread dump is what tests compare it with.

    Raises ProcessLookupError if the process is gone before the dump starts and PermissionError
    if /proc/PID/mem cannot be opened (needs root or CAP_SYS_PTRACE).
    """
    info = info or read_process_info(pid)
    maps = list(maps) if maps is not None else read_maps(pid)
    if resident is None:
        resident = read_resident(pid)
    if sparse is None:
        sparse = read_sparse(pid, maps, resident)
    layout = plan_core(info, maps, max_bytes=max_bytes, resident=resident, sparse=sparse)
    report = DumpReport(pid=pid, layout=layout)
    with ProcessMemory(pid, fast=fast) as mem:
        write(memoryview(layout.header))
        report.written = len(layout.header)
        buf = bytearray(chunk)
        holes: list[Hole] = []
        for addr, size in core_chunks(layout, chunk):
            reason = should_stop()
            if reason:
                report.stopped = reason
                break
            try:
                holes += mem.fill(addr, size, buf)
            except ProcessGone:
                report.stopped = "process exited during the dump"
                break
            write(memoryview(buf)[:size])
            report.written += size
            progress(report.written, layout.size)
        else:
            report.complete = True
        report.unreadable = merge_holes(holes)
        return report
