"""memory collector (ELF core, SHA-256 while written, zstd) vs a plain read of /proc/PID/mem.

    sudo .venv/bin/python -m bench.collectors.memory             # 1 GiB process, 5 reps
    sudo .venv/bin/python bench/collectors/memory.py --mb 512 --reps 3

A python child allocates and touches ``--mb`` MiB of bytearray with varied content (a third
random, a third text-like, a third zero pages, so zstd has real work). The peer is the issue's
reference: read every readable mapping of /proc/PID/mem map by map, discard the bytes. dfir-ar
runs the real collector into a real BundleWriter in a temp spool (the artifact is hashed while
written and staged on disk); the bundle's seal time is reported separately. Prints MiB/s per run,
medians and the ratio (target >= 0.5x of the plain read).

dfir-ar reads with process_vm_readv, which copies each byte once where /proc/PID/mem copies it
twice, so a plain process_vm_readv read (same maps, bytes discarded) is timed too and the ratio
against it printed: that is the floor of what dfir-ar does. After the timed runs one more dump is
taken of the stopped child and checked, untimed: the bundle verifies (every artifact's SHA-256),
the core decompresses to its planned size, readelf reads it as a CORE file, and every PT_LOAD's
bytes equal the child's memory read through /proc/PID/mem.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import zstandard

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collectors.memory import Memory
from dfir_ar import elfcore
from dfir_ar.collector import CollectJob, CollectorContext, Status
from dfir_ar.evidence.bundle import BundleResult, BundleWriter
from dfir_ar.evidence.manifest import AgentInfo, Trigger
from dfir_ar.evidence.verify import verify_bundle
from dfir_ar.responder import Target

MiB = 1024 * 1024

CHILD = r"""
import os, sys
mb = int(sys.argv[1])
blocks = []
text = (b"GET /index.php?id=1 HTTP/1.1 user=admin session=4f2a " * 20000)[: 1 << 20]
for i in range(mb):
    kind = i % 3
    if kind == 0:
        blocks.append(bytearray(os.urandom(1 << 20)))
    elif kind == 1:
        b = bytearray(text)
        b[:8] = i.to_bytes(8, "little")
        blocks.append(b)
    else:
        b = bytearray(1 << 20)  # touched below, so the pages are really there
        b[::4096] = b"\x01" * len(b[::4096])
        blocks.append(b)
print("ready", flush=True)
sys.stdin.read()
"""


def plain_read(pid: int) -> tuple[float, int]:
    """Read every readable mapping of /proc/PID/mem, map by map; (seconds, bytes).
    CPU seconds are read around the call by the caller (time.process_time)."""
    maps = [m for m in elfcore.read_maps(pid) if not elfcore.skip_reason(m)]
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for m in maps:
            pos = m.start
            while pos < m.end:
                try:
                    got = os.preadv(fd, [view[: min(len(buf), m.end - pos)]], pos)
                except OSError:
                    got = 0
                if got <= 0:
                    pos += 4096
                    continue
                total += got
                pos += got
    finally:
        os.close(fd)
    return time.perf_counter() - start, total


def vm_read(pid: int) -> tuple[float, int]:
    """The same maps read with process_vm_readv (elfcore.ProcessMemory, as dfir-ar reads), bytes
    discarded; (seconds, bytes)."""
    maps = [m for m in elfcore.read_maps(pid) if not elfcore.skip_reason(m)]
    buf = bytearray(elfcore.READ_CHUNK)
    total = 0
    start = time.perf_counter()
    with elfcore.ProcessMemory(pid) as mem:
        for m in maps:
            for pos in range(m.start, m.end, len(buf)):
                n = min(len(buf), m.end - pos)
                mem.fill(pos, n, buf)
                total += n
    return time.perf_counter() - start, total


def dfir_dump(
    pid: int, work: Path, keep: bool = False
) -> tuple[float, float, int, int, float, BundleResult]:
    """(collect seconds, seal seconds, core bytes, stored bytes, collect CPU seconds, bundle);
    the sealed bundle is deleted unless ``keep``."""
    mem = Memory(CollectorContext(state_dir=work / "state"))
    writer = BundleWriter(
        work / "spool", trigger=Trigger(operator="bench"),
        agent=AgentInfo(id="000", hostname="bench"), max_bytes=8 << 30,
    )
    writer.begin_collector("memory", "1", {})
    job = CollectJob(
        target=Target(), options=Memory.parse_options(["--pid", str(pid)]),
        deadline=time.monotonic() + 600, max_bytes=8 << 30,
    )
    start = time.perf_counter()
    cpu0 = time.process_time()
    outcome = mem.collect(job, writer)
    collect_s = time.perf_counter() - start
    collect_cpu = time.process_time() - cpu0
    if outcome.status is not Status.OK:
        raise SystemExit(f"dump not ok: {outcome.status} {outcome.reason}")
    writer.end_collector(outcome)
    start = time.perf_counter()
    result = writer.seal()
    seal_s = time.perf_counter() - start
    (dump,) = outcome.details["dumps"]
    if not keep:
        result.path.unlink()
        result.manifest_path.unlink()
    return (collect_s, seal_s, int(dump["core_size"]), int(dump["stored_bytes"]), collect_cpu,
            result)


def _loads(core: Path) -> list[tuple[int, int, int]]:
    """(file offset, vaddr, filesz) of each PT_LOAD of an ELF core, read with struct."""
    with open(core, "rb") as f:
        ehdr = f.read(64)
        if ehdr[:4] != b"\x7fELF" or struct.unpack_from("<H", ehdr, 16)[0] != elfcore.ET_CORE:
            raise SystemExit(f"verify: {core} is not an ELF core")
        phoff, shoff = struct.unpack_from("<QQ", ehdr, 32)
        phnum = struct.unpack_from("<H", ehdr, 56)[0]
        if phnum == elfcore.PN_XNUM:  # the real count is section header 0's sh_info
            f.seek(shoff + 44)
            phnum = struct.unpack("<I", f.read(4))[0]
        f.seek(phoff)
        table = f.read(phnum * 56)
    out = []
    for i in range(phnum):
        ptype, _, off, vaddr, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", table, i * 56)
        if ptype == elfcore.PT_LOAD and filesz:
            out.append((off, vaddr, filesz))
    return out


def verify_dump(child: subprocess.Popen[bytes], work: Path) -> str:
    """One more dump, of the stopped child, checked against its memory (untimed)."""
    os.kill(child.pid, signal.SIGSTOP)
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.001)  # SIGSTOP is asynchronous
    try:
        *_, core_size, stored, _, result = dfir_dump(child.pid, work, keep=True)
        check = verify_bundle(result.path)
        if not check.ok:
            raise SystemExit(f"verify: bundle does not verify: {check.problems}")
        core = work / "core"
        with open(result.path, "rb") as fh, tarfile.open(
            fileobj=zstandard.ZstdDecompressor().stream_reader(fh), mode="r|"
        ) as tar:
            for member in tar:
                if member.name == f"artifacts/memory/{child.pid}.core.zst":
                    src = tar.extractfile(member)
                    assert src is not None
                    with open(core, "wb") as out:
                        zstandard.ZstdDecompressor().copy_stream(src, out)  # every frame
        if not core.exists() or core.stat().st_size != core_size:
            raise SystemExit(f"verify: no core of the planned {core_size} bytes in the bundle")
        readelf = "readelf not installed"
        if shutil.which("readelf"):
            r = subprocess.run(["readelf", "-lW", str(core)], capture_output=True, text=True,
                               check=False)
            if r.returncode or "Elf file type is CORE" not in r.stdout:
                raise SystemExit(f"verify: readelf: {r.stderr.strip()}")
            readelf = "readelf reads it as CORE"
        loads = _loads(core)
        same = _compare_loads(core, loads, child.pid)
        result.path.unlink()
        result.manifest_path.unlink()
        core.unlink()
    finally:
        os.kill(child.pid, signal.SIGCONT)
    return (f"verified (stopped child, untimed): bundle verifies, core {core_size / MiB:.0f} MiB "
            f"({stored / MiB:.0f} MiB stored), {readelf}, {len(loads)} PT_LOADs with data, "
            f"{same / MiB:.0f} MiB of them equal to /proc/PID/mem")


def _pread_or_zeros(fd: int, addr: int, n: int) -> bytes:
    """``n`` bytes of /proc/PID/mem at ``addr``, a page of zeros wherever a read fails."""
    out = bytearray()
    while len(out) < n:
        try:
            got = os.pread(fd, n - len(out), addr + len(out))
        except OSError:
            got = b""
        out += got or bytes(min(4096 - (addr + len(out)) % 4096, n - len(out)))
    return bytes(out)


def _compare_loads(core: Path, loads: list[tuple[int, int, int]], pid: int) -> int:
    """Bytes of the core's PT_LOAD data compared with /proc/PID/mem (pages /proc/PID/mem
    cannot read must be zeros in the core); exits on the first difference."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    compared = 0
    try:
        with open(core, "rb") as f:
            for off, vaddr, filesz in loads:
                f.seek(off)
                for pos in range(0, filesz, MiB):
                    n = min(MiB, filesz - pos)
                    ours = f.read(n)
                    if ours != _pread_or_zeros(fd, vaddr + pos, n):
                        raise SystemExit(
                            f"verify: core bytes at 0x{vaddr + pos:x} differ from the process"
                        )
                    compared += n
    finally:
        os.close(fd)
    return compared


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="child process size in MiB (default 1024)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (>= 3)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: /proc/PID/mem of another process needs it", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ym-bench-mem-"))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(args.mb)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != b"ready":
            raise SystemExit("child failed to start")
        plain_read(child.pid)  # warm-up
        print(f"load average at start: {_loadavg()}")
        peer: list[float] = []
        vm: list[float] = []
        ours: list[float] = []
        seals: list[float] = []
        cpu_peer: list[float] = []
        cpu_vm: list[float] = []
        cpu_ours: list[float] = []
        for rep in range(max(3, args.reps)):
            c0 = time.process_time()
            p_s, p_bytes = plain_read(child.pid)
            c1 = time.process_time()
            v_s, v_bytes = vm_read(child.pid)
            c2 = time.process_time()
            c_s, s_s, core, stored, c_cpu, _ = dfir_dump(child.pid, work)
            peer.append(p_bytes / MiB / p_s)
            vm.append(v_bytes / MiB / v_s)
            ours.append(core / MiB / c_s)
            seals.append(s_s)
            cpu_peer.append((c1 - c0) / (p_bytes / (1 << 30)))
            cpu_vm.append((c2 - c1) / (v_bytes / (1 << 30)))
            cpu_ours.append(c_cpu / (core / (1 << 30)))
            print(f"  rep {rep + 1}: plain read {peer[-1]:7.1f} MiB/s ({p_bytes / MiB:.0f} MiB)   "
                  f"dfir-ar core+sha256+zstd {ours[-1]:7.1f} MiB/s ({core / MiB:.0f} MiB -> "
                  f"{stored / MiB:.0f} MiB stored), bundle seal {s_s:.2f}s   "
                  f"[process_vm_readv read {vm[-1]:7.1f} MiB/s]")
        pm, vmm, om = statistics.median(peer), statistics.median(vm), statistics.median(ours)
        print(f"median: plain read {pm:.1f} MiB/s, dfir-ar dump {om:.1f} MiB/s, "
              f"ratio {om / pm:.2f}x (target >= 0.5x); median seal {statistics.median(seals):.2f}s")
        print(f"median of each run's ratio (plain read and dump taken back to back): "
              f"{statistics.median(o / p for o, p in zip(ours, peer, strict=True)):.2f}x")
        print(f"against a plain process_vm_readv read (how dfir-ar reads; {vmm:.1f} MiB/s): "
              f"ratio {om / vmm:.2f}x")
        print(f"CPU per GiB (all threads, seal excluded): plain read "
              f"{statistics.median(cpu_peer):.2f} s, process_vm_readv read "
              f"{statistics.median(cpu_vm):.2f} s, dfir-ar {statistics.median(cpu_ours):.2f} s")
        print(f"best run (least disturbed by other load): plain read {max(peer):.1f} MiB/s, "
              f"dfir-ar {max(ours):.1f} MiB/s, ratio {max(ours) / max(peer):.2f}x")
        print(f"load average at end: {_loadavg()}")
        load = os.getloadavg()[0]
        if load > 2.5:
            print(f"note: load average {load:.1f}: numbers are contended; rerun on an idle host")
        print(verify_dump(child, work))
        return 0
    finally:
        child.kill()
        child.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
