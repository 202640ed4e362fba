"""Run the pcap collector into a bundle from inside a network namespace:

    ip netns exec NS python -m tests.collectors.pcap_runner SPOOL SRCIP DEADLINE BUNDLE_BYTES \
        [collector options...]

Prints ``READY`` once the capture sockets are open and filtered (the collector reports
"capturing" only then), ``ADDED NAME`` when it starts capturing on an interface that appeared
meanwhile, then the BundleResult as JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from collectors.pcap import Pcap
from dfir_ar.collector import CollectJob, CollectorContext
from dfir_ar.evidence.collect import run_with_writer
from dfir_ar.responder import Target
from dfir_ar.validate import parse_ip
from tests.evidence.helpers import make_writer


def main() -> None:
    spool, srcip, deadline, bundle_bytes, *extra = sys.argv[1:]
    options = Pcap.parse_options(extra)

    def progress(message: str, fraction: float | None) -> None:
        if message.startswith("capturing"):
            print("READY", flush=True)
        elif message.startswith("also capturing on "):
            print("ADDED", message.split()[3], flush=True)

    job = CollectJob(
        target=Target(srcip=parse_ip(srcip)),
        options=options,
        deadline=time.monotonic() + float(deadline),
        max_bytes=int(bundle_bytes),
        progress=progress,
    )
    writer = make_writer(Path(spool), None, max_bytes=int(bundle_bytes))
    collector = Pcap(CollectorContext(state_dir=Path(spool)))
    result = run_with_writer(collector, job, writer, grace=2.0)
    print(json.dumps({"bundle_id": result.bundle_id, "path": str(result.path),
                      "status": result.status.value}), flush=True)


if __name__ == "__main__":
    main()
