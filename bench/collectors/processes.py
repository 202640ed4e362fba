"""processes collector vs ``lsof -n -P`` wall time, on the same host at the same moment.

    .venv/bin/python -m bench.collectors.processes              # 250 extra processes, 7 reps
    .venv/bin/python bench/collectors/processes.py --spawn 0 --reps 5

To look like a busy server, ``--spawn N`` extra processes are started first (python sleepers
each holding a file, a TCP listener and a UDP socket on loopback; killed at the end). Runs
alternate lsof / dfir-ar. dfir-ar is timed twice: ``collect`` (walk /proc, hash executables,
write processes.jsonl through the hashing bundle writer) and ``collect+seal`` (plus the
compressed, hashed .tar.zst). The first dfir-ar run has a cold executable-hash cache and is
reported on its own; the medians use the warm runs, as a serving agent would see.
Prints per-run times, medians and the ratio dfir-ar / lsof (target <= 1.0).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collectors.processes import Processes
from dfir_ar.collector import CollectJob, CollectorContext
from dfir_ar.evidence.bundle import BundleWriter
from dfir_ar.evidence.manifest import AgentInfo, Trigger
from dfir_ar.responder import Target
from dfir_ar.validate import parse_ip

SLEEPER = r"""
import socket, sys, time
f = open(sys.argv[1], "w")
t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(("127.0.0.1", 9))
sys.stdout.write("x\n"); sys.stdout.flush()
time.sleep(600)
"""


def one_dfir(tmp: Path, agent: AgentInfo) -> tuple[float, float, int]:
    writer = BundleWriter(tmp / "spool", trigger=Trigger(srcip="127.0.0.1"), agent=agent,
                          max_bytes=1 << 32)
    writer.begin_collector("processes", "1", {})
    job = CollectJob(target=Target(srcip=parse_ip("127.0.0.1")),
                     options=Processes.parse_options([]), deadline=time.monotonic() + 120,
                     max_bytes=1 << 32)
    collector = Processes(CollectorContext(state_dir=tmp))
    t0 = time.perf_counter()
    outcome = collector.collect(job, writer)
    t1 = time.perf_counter()
    writer.end_collector(outcome)
    result = writer.seal()
    t2 = time.perf_counter()
    result.path.unlink()
    result.manifest_path.unlink()
    return t1 - t0, t2 - t0, int(outcome.details["processes"])


def one_lsof() -> float:
    t0 = time.perf_counter()
    subprocess.run(["lsof", "-n", "-P"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False, timeout=120)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spawn", type=int, default=250, help="extra sleeper processes")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    if shutil.which("lsof") is None:
        print("needs lsof (apt-get install lsof)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="pc-bench-proc-"))
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(args.spawn):
            p = subprocess.Popen([sys.executable, "-c", SLEEPER, str(tmp / f"held{i}")],
                                 stdout=subprocess.PIPE)
            sleepers.append(p)
        for p in sleepers:
            assert p.stdout is not None
            p.stdout.readline()
        agent = AgentInfo.current()
        cold_collect, cold_seal, nproc = one_dfir(tmp, agent)
        one_lsof()  # warm-up: page cache and dentries for lsof too
        lsof_t: list[float] = []
        dfir_c: list[float] = []
        dfir_s: list[float] = []
        for _ in range(args.reps):
            lsof_t.append(one_lsof())
            c, s, nproc = one_dfir(tmp, agent)
            dfir_c.append(c)
            dfir_s.append(s)
        med_l, med_c, med_s = (statistics.median(x) for x in (lsof_t, dfir_c, dfir_s))
        print(f"processes on host: {nproc} (incl. {args.spawn} spawned sleepers)")
        print(f"lsof -n -P          runs: {' '.join(f'{t:.3f}' for t in lsof_t)}")
        print(f"dfir-ar collect     runs: {' '.join(f'{t:.3f}' for t in dfir_c)}")
        print(f"dfir-ar collect+seal runs: {' '.join(f'{t:.3f}' for t in dfir_s)}")
        print(f"dfir-ar first run (cold exe-hash cache): collect {cold_collect:.3f}s, "
              f"collect+seal {cold_seal:.3f}s")
        print(f"median  lsof {med_l:.3f}s | dfir-ar collect {med_c:.3f}s "
              f"(ratio {med_c / med_l:.2f}x) | collect+seal {med_s:.3f}s "
              f"(ratio {med_s / med_l:.2f}x)   target <= 1.0x")
        return 0
    finally:
        for p in sleepers:
            p.kill()
        for p in sleepers:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
