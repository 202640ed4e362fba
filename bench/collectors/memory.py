"""memory collector (ELF core, SHA-256 while written, zstd) vs a plain read of /proc/PID/mem.

    sudo .venv/bin/python -m bench.collectors.memory             # 1 GiB process, 5 reps
    sudo .venv/bin/python bench/collectors/memory.py --mb 512 --reps 3

A python child allocates and touches ``--mb`` MiB of bytearray with varied content (a third
random, a third text-like, a third zero pages, so zstd has real work). The peer is the floor any
dumper pays: read every readable mapping of /proc/PID/mem map by map, discard the bytes. dfir-ar
runs the real collector into a real BundleWriter in a temp spool (the artifact is hashed while
written and staged on disk); the bundle's seal time is reported separately. Prints MiB/s per run,
medians and the ratio (target >= 0.5x of the plain read).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collectors.memory import Memory
from dfir_ar import elfcore
from dfir_ar.collector import CollectJob, CollectorContext, Status
from dfir_ar.evidence.bundle import BundleWriter
from dfir_ar.evidence.manifest import AgentInfo, Trigger
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


def dfir_dump(pid: int, work: Path) -> tuple[float, float, int, int, float]:
    """(collect seconds, seal seconds, core bytes, stored bytes, collect CPU seconds)."""
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
    result.path.unlink()
    result.manifest_path.unlink()
    return collect_s, seal_s, int(dump["core_size"]), int(dump["stored_bytes"]), collect_cpu


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
        peer: list[float] = []
        ours: list[float] = []
        seals: list[float] = []
        cpu_peer: list[float] = []
        cpu_ours: list[float] = []
        for rep in range(max(3, args.reps)):
            c0 = time.process_time()
            p_s, p_bytes = plain_read(child.pid)
            c1 = time.process_time()
            c_s, s_s, core, stored, c_cpu = dfir_dump(child.pid, work)
            peer.append(p_bytes / MiB / p_s)
            ours.append(core / MiB / c_s)
            seals.append(s_s)
            cpu_peer.append((c1 - c0) / (p_bytes / (1 << 30)))
            cpu_ours.append(c_cpu / (core / (1 << 30)))
            print(f"  rep {rep + 1}: plain read {peer[-1]:7.1f} MiB/s ({p_bytes / MiB:.0f} MiB)   "
                  f"dfir-ar core+sha256+zstd {ours[-1]:7.1f} MiB/s ({core / MiB:.0f} MiB -> "
                  f"{stored / MiB:.0f} MiB stored), bundle seal {s_s:.2f}s")
        pm, om = statistics.median(peer), statistics.median(ours)
        print(f"median: plain read {pm:.1f} MiB/s, dfir-ar dump {om:.1f} MiB/s, "
              f"ratio {om / pm:.2f}x (target >= 0.5x); median seal {statistics.median(seals):.2f}s")
        print(f"CPU per GiB (all threads, seal excluded): plain read "
              f"{statistics.median(cpu_peer):.2f} s, dfir-ar {statistics.median(cpu_ours):.2f} s")
        print(f"best run (least disturbed by other load): plain read {max(peer):.1f} MiB/s, "
              f"dfir-ar {max(ours):.1f} MiB/s, ratio {max(ours) / max(peer):.2f}x")
        load = os.getloadavg()[0]
        if load > 2.5:
            print(f"note: load average {load:.1f}: numbers are contended; rerun on an idle host")
        return 0
    finally:
        child.kill()
        child.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
