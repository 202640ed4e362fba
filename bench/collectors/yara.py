"""yara collector vs the yara CLI (``yara -r -p 2``) on the same ~500 MB tree, in one run.

    .venv/bin/python -m bench.collectors.yara            # 500 MB, 5 repetitions each
    .venv/bin/python bench/collectors/yara.py --mb 200 --reps 3
    .venv/bin/python -m bench.collectors.yara --small-files 10000   # per-file cost instead
    .venv/bin/python -m bench.collectors.yara --engine libyara      # dfir-ar without YARA-X

The tree (mixed file sizes 1 KiB .. 4 MiB, random and text-like content, a few planted hits; or
with --small-files N, N script-like files of 30 B .. 1.2 KiB) is built under /tmp and removed at
the end. Both tools get the same rule file (20 rules: text, nocase, wide, hex and regex strings)
and the same thread count (2). After one warm-up run of each (page cache hot for both), which
also checks that both found the same (rule, file) pairs, runs alternate: the CLI as the issue
runs it (it compiles the rule text each run), the CLI on rules precompiled by yarac (``-C``, so
the compile's share is visible), then dfir-ar. dfir-ar's time includes writing and sealing the
bundle; its rules are compiled once per process (as in ``dfir-ar serve``; a fresh
``dfir-ar wazuh-ar`` loads them from the disk cache), and the compile and load times are printed
apart. dfir-ar's file engine is --engine (default auto: YARA-X worker processes when yara-x is
installed and takes the rules); the engine used is printed, with what a collection of an empty
directory costs (with YARA-X: starting and reaping the workers, paid by every collection, and
included in each timed run); dfir-ar's CPU includes its worker processes'.
Prints per-run MB/s, medians and the ratio (target >= 1.2x against the text-rule CLI),
and, because the host is shared, how many cores other processes used during each run (from
/proc/stat) and the medians over the repetitions where both runs had the host to themselves.
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
from collections.abc import Callable
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


def build_small_tree(root: Path, count: int, seed: int = 2) -> tuple[int, int]:
    """``count`` script-like files (30 B .. 1.2 KiB, 250 per directory); returns (files, bytes)."""
    rnd = random.Random(seed)
    line = b"<?php echo htmlspecialchars($_GET['q'] ?? 'hello'); ?>\n"
    written = 0
    for i in range(count):
        d = root / f"d{i // 250:04d}"
        if i % 250 == 0:
            d.mkdir(parents=True, exist_ok=True)
        data = bytearray(line * rnd.randint(1, 22))
        if i % 997 == 0:
            data[len(data) // 2 : len(data) // 2 + len(PLANT)] = PLANT
        (d / f"p{i:06d}.php").write_bytes(data)
        written += len(data)
    return count, written


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _host_busy() -> float:
    """CPU seconds the whole host has spent busy (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


QUIET = 0.15
"""A run is 'quiet' when other processes used fewer cores than this meanwhile."""


def timed(run: Callable[[], tuple[float, float]]) -> tuple[float, float, float]:
    """(wall, CPU, cores other processes used meanwhile) of ``run``, which returns (wall, CPU)."""
    busy0 = _host_busy()
    wall, cpu = run()
    others = (_host_busy() - busy0 - cpu) / wall
    return wall, cpu, max(others, 0.0)


def run_peer(rules: Path, tree: Path, threads: int, compiled: bool = False
             ) -> tuple[float, float, list[str]]:
    """(wall seconds, CPU seconds, output lines) of one ``yara -r -p N [-C]`` run."""
    cpu0 = _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        ["yara", "-r", "-p", str(threads), *(["-C"] if compiled else []), str(rules), str(tree)],
        capture_output=True, check=False, timeout=600,
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"yara CLI failed: {proc.stderr.decode(errors='replace')}")
    return took, _cpu(resource.RUSAGE_CHILDREN) - cpu0, proc.stdout.decode().splitlines()


def rules_setup_ms(rules: Path, work: Path) -> tuple[float, float]:
    """dfir-ar's one-off cost per process: (compile ms, load-from-disk-cache ms), not timed runs."""
    from collectors import yara_scan, yarax_engine

    state = work / "setup-state"
    ctx = CollectorContext(state_dir=state, settings={"rules": [str(rules)]})
    yara_scan._compiled.clear()
    yarax_engine._compiled.clear()
    start = time.perf_counter()
    YaraScan(ctx)  # compiles (libyara, and YARA-X when installed) and saves to <state>/yara-cache
    compiled = time.perf_counter() - start
    yara_scan._compiled.clear()
    yarax_engine._compiled.clear()
    start = time.perf_counter()
    YaraScan(ctx)  # a fresh process: loads the saved rules
    loaded = time.perf_counter() - start
    shutil.rmtree(state, ignore_errors=True)
    return compiled * 1000, loaded * 1000


def run_dfir(
    rules: Path, tree: Path, threads: int, work: Path, engine: str = "auto"
) -> tuple[float, float, dict[str, object]]:
    """(wall seconds, CPU seconds, outcome details) of one collection, bundle sealed. The CPU
    includes the YARA-X worker processes (reaped children), started and ended in the run."""
    ctx = CollectorContext(
        state_dir=work / "state",
        settings={"rules": [str(rules)], "threads": threads, "max_file_mb": 64, "engine": engine},
    )
    scan = YaraScan(ctx)
    spool = work / "spool"
    cpu0 = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
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
    cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - cpu0
    result.path.unlink()
    result.manifest_path.unlink()
    return took, cpu, dict(outcome.details)


def fixed_cost_ms(rules: Path, threads: int, work: Path, engine: str) -> float:
    """Median wall ms of a collection of an empty directory: what every collection pays whatever
    it scans (with YARA-X: starting and reaping the worker processes)."""
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    return statistics.median(run_dfir(rules, empty, threads, work, engine)[0] for _ in range(5)) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500, help="tree size in MB (default 500)")
    ap.add_argument("--small-files", type=int, default=0, metavar="N",
                    help="instead: N small script-like files (per-file cost)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per tool (>= 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", default="auto", choices=("auto", "yara-x", "libyara"),
                    help="dfir-ar's file engine (default auto: YARA-X when it takes the rules)")
    args = ap.parse_args(argv)
    if shutil.which("yara") is None or shutil.which("yarac") is None:
        print("the yara CLI is not installed (apt-get install yara)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ym-bench-yara-"))
    try:
        tree = work / "tree"
        t = time.perf_counter()
        if args.small_files:
            files, total = build_small_tree(tree, args.small_files)
        else:
            files, total = build_tree(tree, args.mb)
        print(f"tree: {files} files, {total / MiB:.0f} MiB, built in {time.perf_counter() - t:.1f}s")
        rules = work / "bench.yar"
        rules.write_text(rules_text())
        compiled = work / "bench.yarc"
        subprocess.run(["yarac", str(rules), str(compiled)], check=True, capture_output=True)
        comp_ms, load_ms = rules_setup_ms(rules, work)
        print(f"dfir-ar rules: compile {comp_ms:.1f} ms, load from the disk cache {load_ms:.1f} ms "
              "(once per process, outside the timed runs)")
        # Warm-up (page cache hot for both) and a check that both found the same things.
        _, _, lines = run_peer(rules, tree, args.threads)
        run_peer(compiled, tree, args.threads, compiled=True)
        _, _, details = run_dfir(rules, tree, args.threads, work, args.engine)
        note = f" ({details['engine_note']})" if details.get("engine_note") else ""
        fixed = fixed_cost_ms(rules, args.threads, work, args.engine)
        fixed_lib = fixed_cost_ms(rules, args.threads, work, "libyara")
        print(f"dfir-ar file engine: {details['engine']}{note}; a collection of an empty directory "
              f"takes {fixed:.1f} ms (libyara: {fixed_lib:.1f} ms)")
        pairs = {tuple(line.split(" ", 1)) for line in lines}
        theirs = (len({p for _, p in pairs}), len(pairs))
        ours = (details["files_matched"], details["matches"])
        print(f"check: {details['files_scanned']} files scanned; matched files, matches: "
              f"yara CLI {theirs}, dfir-ar {ours}")
        if details["files_scanned"] != files or theirs != ours:
            print("the two tools did not scan the same files or find the same matches",
                  file=sys.stderr)
            return 1
        keys = ("peer", "peer_c", "ours", "peer_cpu", "peer_c_cpu", "ours_cpu")
        rates: dict[str, list[float]] = {k: [] for k in keys}
        quiet: dict[str, list[float]] = {"peer": [], "ours": []}
        mib = total / MiB
        for rep in range(max(3, args.reps)):
            pw, pc, po = timed(lambda: run_peer(rules, tree, args.threads)[:2])
            cw, cc, _ = timed(lambda: run_peer(compiled, tree, args.threads, compiled=True)[:2])
            ow, oc, oo = timed(lambda: run_dfir(rules, tree, args.threads, work, args.engine)[:2])
            for key, value in zip(keys, (pw, cw, ow, pc, cc, oc), strict=True):
                rates[key].append(mib / value)
            if po < QUIET and oo < QUIET:
                quiet["peer"].append(mib / pw)
                quiet["ours"].append(mib / ow)
            print(f"  rep {rep + 1}: yara -r -p {args.threads} {mib / pw:7.1f} MiB/s "
                  f"({mib / pc:6.1f} per CPU-s)   with -C {mib / cw:7.1f} ({mib / cc:6.1f})   "
                  f"dfir-ar {mib / ow:7.1f} MiB/s ({mib / oc:6.1f} per CPU-s)   "
                  f"others used {po:.2f} / {oo:.2f} cores")
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"median wall: yara CLI {med['peer']:.1f} MiB/s, dfir-ar {med['ours']:.1f} MiB/s, "
              f"ratio {med['ours'] / med['peer']:.2f}x (target >= 1.2x)")
        print(f"median wall, CLI on precompiled rules (-C): {med['peer_c']:.1f} MiB/s, ratio "
              f"{med['ours'] / med['peer_c']:.2f}x")
        print(f"median per CPU-second: yara CLI {med['peer_cpu']:.1f} (-C {med['peer_c_cpu']:.1f}), "
              f"dfir-ar {med['ours_cpu']:.1f}, ratio {med['ours_cpu'] / med['peer_cpu']:.2f}x "
              "(robust when other work shares the cores)")
        if quiet["peer"]:
            qp, qo = statistics.median(quiet["peer"]), statistics.median(quiet["ours"])
            print(f"median wall of the {len(quiet['peer'])} repetitions where other processes used "
                  f"< {QUIET} cores during both runs: yara CLI {qp:.1f} MiB/s, dfir-ar {qo:.1f} "
                  f"MiB/s, ratio {qo / qp:.2f}x")
        else:
            print(f"no repetition ran with other processes under {QUIET} cores")
        best_p, best_o = max(rates["peer"]), max(rates["ours"])
        print(f"best run (least disturbed by other load): yara CLI {best_p:.1f} MiB/s, dfir-ar "
              f"{best_o:.1f} MiB/s, ratio {best_o / best_p:.2f}x")
        load = os.getloadavg()
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
        if load[0] > args.threads + 0.5:
            print("note: the wall numbers are contended; prefer the CPU-second ratio or rerun on "
                  "an idle host")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
