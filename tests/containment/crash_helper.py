"""Run inside a namespace (``ip netns exec NS python -m tests.containment.crash_helper ...``):
block COUNT addresses from 198.18.0.0/15 with firewall-drop, half with SHORT seconds and half
with LONG seconds of timeout, print "ready", then die by SIGKILL as a crashed service would."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from dfir_ar.responder import Request, ResponderContext, Target
from responders.firewall_drop import FirewallDrop

BASE = int(ipaddress.IPv4Address("198.18.0.0"))


def addresses(count: int) -> list[ipaddress.IPv4Address]:
    return [ipaddress.IPv4Address(BASE + 1 + i) for i in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--short", type=float, required=True)
    ap.add_argument("--long", type=float, required=True)
    args = ap.parse_args()
    ctx = ResponderContext(
        state_dir=Path(tempfile.gettempdir()),
        white_list=[ipaddress.ip_network("127.0.0.0/8")],
        options={"backend": args.backend},
        log=logging.getLogger("crash_helper"),
    )
    fw = FirewallDrop(ctx)
    reqs = [
        Request(command="firewall-drop", target=Target(srcip=addr),
                timeout=args.short if i % 2 == 0 else args.long)
        for i, addr in enumerate(addresses(args.count))
    ]
    result = fw.add_many(reqs)
    print(f"ready {len(result.added)}", flush=True)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
