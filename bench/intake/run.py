"""Intake benchmark: alerts/s through parse -> match -> decide, next to plain json.loads on the
same lines; and FileTail latency from append to handler at a steady 1,000 alerts/s.

    .venv/bin/python bench/intake/run.py [--alerts 50000] [--reps 5] [--rate 1000] [--seconds 3]

Throughput is measured in CPU time (time.process_time), so a busy shared machine skews the
ratio less than wall time would. The full engine benchmark (dispatch to a no-op responder,
ledger included) is bench/engine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dfir_ar.alert import Alert  # noqa: E402
from dfir_ar.config.models import Config  # noqa: E402
from dfir_ar.pipeline import Pipeline  # noqa: E402
from dfir_ar.rails import host_protected_networks  # noqa: E402
from dfir_ar.sources.base import Cursor, MemoryCursorStore, Rejected  # noqa: E402
from dfir_ar.sources.reader import RecordReader  # noqa: E402
from dfir_ar.sources.tail import FileTail  # noqa: E402

SAMPLES = ROOT / "examples" / "alerts" / "wazuh-ssh-bruteforce.json"


def config() -> Config:
    # A realistic binding table: the SSH bindings plus 2,000 unrelated rule ids and group rules.
    ars = [
        {"command": "block", "rules_id": [5712, 5720, 5763], "timeout": 600,
         "repeated_offenders": [30, 60]},
        {"command": "block", "rules_id": list(range(100_000, 102_000)), "timeout": 60},
        {"command": "snap", "level": 12, "rules_group": "authentication_success|web,"},
    ]
    return Config.model_validate({
        "global": {"white_list": ["198.51.100.10"]},
        "command": [{"name": "block", "executable": "block", "expect": ["srcip"],
                     "timeout_allowed": True},
                    {"name": "snap", "executable": "snap"}],
        "active_response": ars,
    })


def lines(n: int) -> bytes:
    sample = SAMPLES.read_bytes().splitlines()
    out = []
    for i in range(n):
        obj = json.loads(sample[i % len(sample)])
        obj["data"]["srcip"] = f"198.51.{100 + (i >> 8) % 2}.{i % 250 + 1}"
        obj["id"] = f"1795334400.{i}"
        out.append(json.dumps(obj, separators=(",", ":")).encode())
    return b"\n".join(out) + b"\n"


def throughput(data: bytes, reps: int) -> None:
    pipeline = Pipeline(config(), host_protected_networks())
    n = data.count(b"\n")
    raw, ours = [], []
    for _ in range(reps):
        start = time.process_time()
        for line in data.split(b"\n")[:-1]:
            json.loads(line)
        raw.append(n / (time.process_time() - start))
        start = time.process_time()
        reader = RecordReader("auto")
        orders = 0
        for i in range(0, len(data), 1 << 20):
            for item, _end in reader.feed(data[i : i + (1 << 20)]):
                if isinstance(item, Alert):
                    for d in pipeline.decide(item, 1_795_334_400.0):
                        orders += d.order is not None
        ours.append(n / (time.process_time() - start))
    r, o = statistics.median(raw), statistics.median(ours)
    print(f"alerts: {n} x {reps} reps; {orders} orders per rep")
    print(f"json.loads only:                  median {r:10,.0f} alerts/s")
    print(f"frame+parse+match+decide (intake): median {o:10,.0f} alerts/s  ratio {o / r:.2f}")


WRITER = """
import json, sys, time
path, rate, total, sample = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
obj = json.loads(sample)
with open(path, "ab", buffering=0) as f:
    start = time.monotonic()
    for i in range(total):
        due = start + i / rate
        while (now := time.monotonic()) < due:
            time.sleep(min(0.0005, due - now))
        obj["id"] = str(time.monotonic_ns())
        f.write(json.dumps(obj).encode() + b"\\n")
"""


def latency(rate: int, seconds: float, use_inotify: bool = True) -> list[float]:
    """Append->handler latency with the writer in its own process (as Wazuh is): each line
    carries its write time (CLOCK_MONOTONIC, shared by all processes) as its alert id."""
    with tempfile.TemporaryDirectory(prefix="in-bench-") as tmp:
        path = Path(tmp) / "alerts.json"
        path.write_bytes(b"")
        sample = SAMPLES.read_bytes().splitlines()[-1].decode()
        lat: list[float] = []

        def handle(item: Alert | Rejected, cursor: Cursor | None) -> None:
            if isinstance(item, Alert) and item.id:
                lat.append((time.monotonic_ns() - int(item.id)) / 1e9)

        src = FileTail("file:bench", path, MemoryCursorStore(), use_inotify=use_inotify)
        stop = threading.Event()
        t = threading.Thread(target=src.run, args=(handle, stop))
        t.start()
        src.ready.wait(5)
        total = int(rate * seconds)
        subprocess.run(
            [sys.executable, "-c", WRITER, str(path), str(rate), str(total), sample],
            check=True, timeout=seconds * 3 + 30,
        )
        deadline = time.monotonic() + 5
        while len(lat) < total and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        t.join()
    lat.sort()
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
    mode = "inotify" if use_inotify else "2 ms polling"
    print(f"FileTail ({mode}) append->handler at {rate}/s for {seconds:g}s: {len(lat)}/{total} "
          f"delivered, p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat[-1] * 1000:.2f} ms")
    return [p50, p99]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--alerts", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    throughput(lines(args.alerts), args.reps)
    for use_inotify in (True, False):
        runs = [latency(args.rate, args.seconds, use_inotify) for _ in range(args.reps)]
        p50 = statistics.median(r[0] for r in runs)
        p99 = statistics.median(r[1] for r in runs)
        mode = "inotify" if use_inotify else "polling"
        print(f"  {mode}: median of {args.reps} runs: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
