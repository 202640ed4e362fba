"""The parse stage alone: parsers.parse_wazuh_line next to json.loads and orjson.loads of the
same lines (bench/engine's alert_line), CPU time of this thread, gc disabled and every result
kept in a list (as serve keeps alerts queued). Prints the median of --runs per-line costs.

    .venv/bin/python -m bench.intake.parse [--alerts 20000] [--runs 7]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.engine.run import alert_line
from dfir_ar.parsers import parse_wazuh_line


def cost(fn: Callable[[bytes], Any], lines: list[bytes]) -> float:
    """Seconds of this thread's CPU per line, the results held until the clock stops."""
    gc.collect()
    gc.disable()
    try:
        start = time.thread_time()
        kept = [fn(line) for line in lines]
        spent = time.thread_time() - start
    finally:
        gc.enable()
    if len(kept) != len(lines):
        raise SystemExit("a line was lost")
    return spent / len(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--alerts", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    lines = [alert_line(i).encode() for i in range(args.alerts)]
    subjects: dict[str, Callable[[bytes], Any]] = {
        "json.loads": json.loads,
        "orjson.loads": orjson.loads,
        "parse_wazuh_line": parse_wazuh_line,
        "parse + raw[...] (decode)": lambda line: parse_wazuh_line(line).raw["rule"],
    }
    results: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(args.runs):
        for name, fn in subjects.items():
            results[name].append(cost(fn, lines))
    print(f"parse stage, {args.alerts} lines, median of {args.runs} runs, "
          f"loadavg {os.getloadavg()[0]:.2f}:")
    ref = statistics.median(results["json.loads"])
    for name, runs in results.items():
        m = statistics.median(runs)
        print(f"  {name:28s} {m * 1e6:6.2f} us/line  ({ref / m:4.2f}x json.loads rate)")


if __name__ == "__main__":
    main()
