"""yara collector vs the yara CLI (``yara -r -p 2``) on the same ~500 MB tree, in one run.

    .venv/bin/python -m bench.collectors.yara            # 500 MB, 5 repetitions each
    .venv/bin/python bench/collectors/yara.py --mb 200 --reps 3

The tree (mixed file sizes 1 KiB .. 4 MiB, random and text-like content, a few planted hits) is
built under /tmp and removed at the end. Both tools get the same rule file (20 rules: text,
nocase, wide, hex and regex strings) and the same thread count (2). After one warm-up run of each
(page cache hot for both), runs alternate peer/dfir-ar; dfir-ar's time includes writing and
sealing the bundle. Prints per-run MB/s, medians and the ratio (target >= 1.2x).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collectors.yara_scan import YaraScan
from dfir_ar.collector import CollectJob, CollectorContext
from dfir_ar.evidence.bundle import BundleWriter
from dfir_ar.evidence.manifest import AgentInfo, Trigger
from dfir_ar.responder import Target

MiB = 1024 * 1024
PLANT = b"ym-bench-planted-7f3a9c"


def rules_text() -> str:
    """20 rules in the shape of public webshell/malware sets: plain, nocase, wide, hex with
    wildcards, and a regex each, plus the planted marker."""
    rules = []
    for i in range(20):
        rules.append(
            f"""rule bench_{i} {{
    meta:
        n = {i}
    strings:
        $t{i} = "suspicious_token_{i:03d}_xyz"
        $w{i} = "EvilMarker{i}" nocase
        $u{i} = "cmd.exe /c whoami{i}" ascii wide
        $h{i} = {{ 4D 5A 90 00 {i:02X} 00 00 00 ?? 00 FF FF }}
        $r{i} = /eval\\(base64_decode\\([a-z]{{{i + 2}}}\\)/
        $p = "{PLANT.decode()}"
    condition:
        any of them
}}
"""
        )
    return "\n".join(rules)


def build_tree(root: Path, total_mb: int, seed: int = 1) -> tuple[int, int]:
    """Files of mixed sizes totalling ``total_mb``; returns (files, bytes)."""
    rnd = random.Random(seed)
    words = [b"the", b"quick", b"brown", b"fox", b"jumps", b"over", b"lazy", b"dog", b"event"]
    sizes = [1024, 8 * 1024, 64 * 1024, 256 * 1024, 1 * MiB, 4 * MiB]
    target = total_mb * MiB
    written = files = 0
    while written < target:
        d = root / f"d{files % 37:02d}" / f"s{files % 7}"
        d.mkdir(parents=True, exist_ok=True)
        size = min(rnd.choice(sizes), target - written)
        if files % 3 == 0:
            data = bytearray(os.urandom(size))
        else:
            line = b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
            data = bytearray((line * (size // len(line) + 1))[:size])
        if files % 97 == 0 and size > len(PLANT) + 16:
            data[size // 2 : size // 2 + len(PLANT)] = PLANT
        (d / f"f{files:06d}.bin").write_bytes(data)
        written += size
        files += 1
    return files, written


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def run_peer(rules: Path, tree: Path, threads: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``yara -r -p N`` run."""
    cpu0 = _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        ["yara", "-r", "-p", str(threads), str(rules), str(tree)],
        capture_output=True, check=False, timeout=600,
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"yara CLI failed: {proc.stderr.decode(errors='replace')}")
    return took, _cpu(resource.RUSAGE_CHILDREN) - cpu0


def run_dfir(
    rules: Path, tree: Path, threads: int, work: Path
) -> tuple[float, float, dict[str, object]]:
    """(wall seconds, CPU seconds, outcome details) of one collection, bundle sealed."""
    ctx = CollectorContext(
        state_dir=work / "state",
        settings={"rules": [str(rules)], "threads": threads, "max_file_mb": 64},
    )
    scan = YaraScan(ctx)
    spool = work / "spool"
    cpu0 = _cpu(resource.RUSAGE_SELF)
    start = time.perf_counter()
    writer = BundleWriter(
        spool, trigger=Trigger(operator="bench"),
        agent=AgentInfo(id="000", hostname="bench", addresses=(), os="", kernel=""),
        max_bytes=1 << 30,
    )
    writer.begin_collector("yara", "1", {})
    job = CollectJob(
        target=Target(), options=YaraScan.parse_options(["--path", str(tree), "--memory", "none"]),
        deadline=time.monotonic() + 600, max_bytes=1 << 30,
    )
    outcome = scan.collect(job, writer)
    writer.end_collector(outcome)
    result = writer.seal()
    took = time.perf_counter() - start
    cpu = _cpu(resource.RUSAGE_SELF) - cpu0
    result.path.unlink()
    result.manifest_path.unlink()
    return took, cpu, dict(outcome.details)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500, help="tree size in MB (default 500)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per tool (>= 3)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if shutil.which("yara") is None:
        print("the yara CLI is not installed (apt-get install yara)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ym-bench-yara-"))
    try:
        tree = work / "tree"
        t = time.perf_counter()
        files, total = build_tree(tree, args.mb)
        print(f"tree: {files} files, {total / MiB:.0f} MiB, built in {time.perf_counter() - t:.1f}s")
        rules = work / "bench.yar"
        rules.write_text(rules_text())
        run_peer(rules, tree, args.threads)  # warm-up: page cache hot for both
        _, _, details = run_dfir(rules, tree, args.threads, work)
        print(f"dfir-ar check: {details['files_scanned']} files, {details['files_matched']} matched")
        rates: dict[str, list[float]] = {"peer": [], "ours": [], "peer_cpu": [], "ours_cpu": []}
        mib = total / MiB
        for rep in range(max(3, args.reps)):
            pw, pc = run_peer(rules, tree, args.threads)
            ow, oc, _ = run_dfir(rules, tree, args.threads, work)
            for key, value in (("peer", pw), ("ours", ow), ("peer_cpu", pc), ("ours_cpu", oc)):
                rates[key].append(mib / value)
            print(f"  rep {rep + 1}: yara -r -p {args.threads} {mib / pw:7.1f} MiB/s "
                  f"({mib / pc:6.1f} per CPU-s)   dfir-ar {mib / ow:7.1f} MiB/s "
                  f"({mib / oc:6.1f} per CPU-s)")
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"median wall: yara CLI {med['peer']:.1f} MiB/s, dfir-ar {med['ours']:.1f} MiB/s, "
              f"ratio {med['ours'] / med['peer']:.2f}x (target >= 1.2x)")
        print(f"median per CPU-second: yara CLI {med['peer_cpu']:.1f}, dfir-ar "
              f"{med['ours_cpu']:.1f}, ratio {med['ours_cpu'] / med['peer_cpu']:.2f}x "
              "(robust when other work shares the cores)")
        best_p, best_o = max(rates["peer"]), max(rates["ours"])
        print(f"best run (least disturbed by other load): yara CLI {best_p:.1f} MiB/s, dfir-ar "
              f"{best_o:.1f} MiB/s, ratio {best_o / best_p:.2f}x")
        load = os.getloadavg()[0]
        if load > args.threads + 0.5:
            print(f"note: load average {load:.1f} on {os.cpu_count()} cores: wall numbers are "
                  "contended; prefer the CPU-second ratio or rerun on an idle host")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
