"""Run the pcap collector into a bundle from inside a network namespace:

    ip netns exec NS python -m tests.collectors.pcap_runner SPOOL SRCIP DEADLINE BUNDLE_BYTES \
        [collector options...]

Prints ``READY`` once the capture sockets are open and filtered (the collector reports
"capturing" only then), ``ADDED NAME`` when it starts capturing on an interface that appeared
meanwhile, ``PACKETS N`` whenever the collector reports its packet count, then the BundleResult
as JSON.

The collector's clock is real monotonic time plus an offset that lines on stdin move forward,
so a test decides when the capture window ends instead of racing a fixed ``--duration``:

- ``STOP``: add ``--duration`` to the offset; the capture ends within one poll as "duration
  reached" (status ok), after its final drain of what the kernel queued.
- ``COUNT``: add the 5 s progress interval to the offset; within one poll the collector reports
  "N packets" (the packets it has read so far) and this prints ``PACKETS N``.

DEADLINE is measured on the same clock, so give it room for the offsets the test adds."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

from collectors.pcap import Pcap
from dfir_ar.collector import CollectJob, CollectorContext
from dfir_ar.evidence.collect import run_with_writer
from dfir_ar.responder import Target
from dfir_ar.validate import parse_ip
from tests.evidence.helpers import make_writer

PROGRESS_EVERY = 5.0
"""How much collector time passes between two "N packets" reports (collectors/pcap.py)."""


class SteppedClock:
    """Real time, plus an offset the test moves forward through the runner's stdin."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time() + self._offset

    def monotonic(self) -> float:
        with self._lock:
            return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds


def follow_stdin(clock: SteppedClock, duration: float) -> None:
    for line in sys.stdin:
        command = line.strip()
        if command == "STOP":
            clock.advance(duration)
        elif command == "COUNT":
            clock.advance(PROGRESS_EVERY)
        elif command:
            print(f"unknown command {command!r}", file=sys.stderr, flush=True)


def main() -> None:
    spool, srcip, deadline, bundle_bytes, *extra = sys.argv[1:]
    options = Pcap.parse_options(extra)
    clock = SteppedClock()
    threading.Thread(target=follow_stdin, args=(clock, float(options["duration"])),
                     daemon=True).start()

    def progress(message: str, fraction: float | None) -> None:
        if message.startswith("capturing"):
            print("READY", flush=True)
        elif message.startswith("also capturing on "):
            print("ADDED", message.split()[3], flush=True)
        elif counted := re.fullmatch(r"(\d+) packets", message):
            print("PACKETS", counted[1], flush=True)

    job = CollectJob(
        target=Target(srcip=parse_ip(srcip)),
        options=options,
        deadline=clock.monotonic() + float(deadline),
        max_bytes=int(bundle_bytes),
        progress=progress,
        clock=clock,
    )
    writer = make_writer(Path(spool), None, max_bytes=int(bundle_bytes))
    collector = Pcap(CollectorContext(state_dir=Path(spool)))
    result = run_with_writer(collector, job, writer, grace=2.0)
    print(json.dumps({"bundle_id": result.bundle_id, "path": str(result.path),
                      "status": result.status.value}), flush=True)


if __name__ == "__main__":
    main()
