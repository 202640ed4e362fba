"""Where an alert's time goes: the engine's stages run one after another on ONE thread, on the same
alerts as bench/engine, so each stage's cost per alert is measured without the GIL hand-offs
between the source, ledger-writer and worker threads (the threaded total is higher; see run.py).

Stages (the real code, called the way serve calls it):
  parse            parsers.parse_wazuh_line (bytes -> Alert)
  decide           Pipeline.decide (matcher, white list, Order with a new id)
  record           Executor._prepare inside Ledger.transaction, 512 alerts per commit: lookup
                   (keys worked out first, batch prefetch), escalation, intent row, cursor; the
                   COMMIT itself
  execute          Executor._run_chunk, 256 per chunk: responder.add (no-op), Wazuh log lines
                   (Starting + input JSON + Ended), audit record, applied mark, timer
  applied-commit   waiting for the applied marks' commit

    .venv/bin/python -m bench.engine.stages [--alerts 20000]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.engine.run import NoOp, alert_line, config, reset
from dfir_ar.executor import Executor
from dfir_ar.ledger import Ledger
from dfir_ar.parsers import parse_wazuh_line
from dfir_ar.pipeline import Pipeline
from dfir_ar.service import tune_gc


def stages(n: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Seconds per alert for each stage (``clock``: wall time, or time.thread_time for CPU time
    that other processes' load does not inflate)."""
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        root = Path(tmp)
        cfg = config(root, root / "alerts.json")
        lines = [alert_line(i).encode() for i in range(n)]
        reset(n)
        ledger = Ledger.open(cfg.global_.state_dir)
        ex = Executor(cfg, ledger, protected=[])
        ex.register_responder("bench-noop", NoOp)
        pipe = Pipeline(cfg, [])
        thresholds = gc.get_threshold()
        gc.collect()
        tune_gc()  # what serve does after start-up
        t: dict[str, float] = {}
        s = clock()
        for line in lines:
            json.loads(line)
        t["json.loads (reference)"] = clock() - s
        s = clock()
        alerts = [parse_wazuh_line(line) for line in lines]
        t["parse"] = clock() - s
        now = time.time()
        s = clock()
        orders = [d.order for a in alerts for d in pipe.decide(a, now)]
        t["decide"] = clock() - s
        if len(orders) != n or any(o is None for o in orders):
            raise SystemExit("not every alert matched exactly one response")
        plans: list[Any] = []
        s = clock()
        for i in range(0, n, 512):
            batch = [o for o in orders[i:i + 512] if o is not None]
            keys = ex._keys(batch)
            with ledger.transaction() as tx:
                tx.prefetch([(o.command, k) for o, k in zip(batch, keys, strict=True) if k])
                plans.extend(ex._prepare(tx, o, now, k) for o, k in zip(batch, keys, strict=True))
                tx.save_cursor("bench", str(i), now)
        t["record"] = clock() - s
        if any(p.kind != "add" for p in plans):
            raise SystemExit("a plan was refused")
        ex._active += n
        s = clock()
        for i in range(0, n, 256):
            ex._run_chunk(plans[i:i + 256])
        t["execute"] = clock() - s
        s = clock()
        ex.flush()
        t["applied-commit"] = clock() - s
        if len(NoOp.executed) != n:
            raise SystemExit(f"only {len(NoOp.executed)}/{n} executed")
        applied = ledger._query("SELECT count(*) FROM entries WHERE status = 'applied'", ())
        if applied[0][0] != n:
            raise SystemExit(f"{applied[0][0]}/{n} entries applied in the ledger")
        ex.shutdown()
        ledger.close()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    return {k: v / n for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--alerts", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cpu", action="store_true",
                    help="CPU time of the thread instead of wall time (steadier on a busy machine)")
    args = ap.parse_args()
    clock = time.thread_time if args.cpu else time.perf_counter
    runs = [stages(args.alerts, clock) for _ in range(args.runs)]
    print(f"bench/engine stages, one thread, {args.alerts} alerts, median of {args.runs} runs, "
          f"{'CPU' if args.cpu else 'wall'} time:")
    total = 0.0
    for name in runs[0]:
        value = sorted(r[name] for r in runs)[len(runs) // 2]
        if not name.startswith("json"):
            total += value
        print(f"  {name:24s} {value * 1e6:7.1f} us/alert")
    print(f"  {'engine total':24s} {total * 1e6:7.1f} us/alert")


if __name__ == "__main__":
    main()
