"""pcap collector vs ``tcpdump -w`` capturing the same bounded UDP flood at the same time.

    .venv/bin/python -m bench.collectors.pcap                    # 200k packets, 3 runs
    .venv/bin/python bench/collectors/pcap.py --packets 100000 --reps 5

Two network namespaces (198.51.100.0/24, deleted at the end). In the agent namespace tcpdump
(``-B 65536``: the same 64 MiB kernel buffer dfir-ar asks for) and the dfir-ar pcap collector
both capture ``host <attacker>`` on the veth; once both are listening, the attacker namespace
sends N UDP datagrams (64-byte payload) from ``--senders`` parallel Python loops, as fast
as they can (the send rate is printed; the two cores are shared by senders and capturers). Both captures are
counted from the files they wrote. Prints per-run counts, kernel drops, CPU seconds of each
capturer, medians and the ratio dfir-ar / tcpdump (target >= 0.95, no loss where tcpdump has
none). ``--ring no`` measures the recvmsg fallback instead of the TPACKET_V3 ring.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.evidence.helpers import extract_artifact
from tests.netns import NetPair, net_pair

REPO = Path(__file__).resolve().parents[2]

FLOOD = r"""
import socket, sys, time
src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
payload, addr, send = b"f" * 64, (dst, 9), s.sendto
t0 = time.perf_counter()
deadline = t0 + 60
sent = 0
while sent < count and time.perf_counter() < deadline:
    for _ in range(1000):
        try:
            send(payload, addr)
            sent += 1
        except BlockingIOError:
            pass
print(sent, time.perf_counter() - t0, flush=True)
"""


def count_pcap(path: Path) -> int:
    """Records in a pcap file (either timestamp resolution), without dissecting packets."""
    n = 0
    with open(path, "rb") as fh:
        fh.read(24)
        while head := fh.read(16):
            if len(head) < 16:
                break
            incl = struct.unpack("<IIII", head)[2]
            fh.seek(incl, os.SEEK_CUR)
            n += 1
    return n


def flood(pair: NetPair, packets: int, senders: int) -> tuple[int, float]:
    """``senders`` parallel Python loops; returns (datagrams sent, wall seconds)."""
    per = packets // senders
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(["ip", "netns", "exec", pair.attacker, sys.executable, "-c", FLOOD,
                          pair.a4, pair.b4, str(per + (packets - per * senders if i == 0 else 0))],
                         stdout=subprocess.PIPE, text=True)
        for i in range(senders)
    ]
    sent = 0
    for p in procs:
        out, _ = p.communicate(timeout=120)
        sent += int(out.split()[0])
    return sent, time.perf_counter() - t0


def one_run(pair: NetPair, tmp: Path, packets: int, senders: int,
            ring: str = "yes") -> dict[str, float]:
    spool = tmp / f"spool-{time.monotonic_ns()}"
    tcpdump_file = tmp / "tcpdump.pcap"
    duration = 12 + packets / 40_000
    tcpdump = subprocess.Popen(
        pair.agent_argv(["tcpdump", "-n", "-B", "65536", "-s", "262144", "-i", pair.agent_if,
                         "-w", str(tcpdump_file), "host", pair.a4]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    ours = subprocess.Popen(
        pair.agent_argv([sys.executable, "-m", "tests.collectors.pcap_runner", str(spool),
                         pair.a4, str(duration + 30), str(1 << 32), "--duration", str(duration),
                         "--interface", pair.agent_if, f"--ring={ring}"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert tcpdump.stderr is not None and ours.stdout is not None
        line = tcpdump.stderr.readline()
        if "listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line}")
        if ours.stdout.readline().strip() != "READY":
            raise RuntimeError("dfir-ar pcap did not start")
        start = time.monotonic()
        sent, secs = flood(pair, packets, senders)
        time.sleep(1.0)  # let both drain their queues
        # CPU of each capturer: children's rusage deltas around each wait (senders are reaped).
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        tcpdump.send_signal(signal.SIGINT)
        _, err = tcpdump.communicate(timeout=30)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        stats = err
        out, _ = ours.communicate(timeout=duration + 60 - (time.monotonic() - start))
        r2 = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        for p in (tcpdump, ours):
            if p.poll() is None:
                p.kill()
                p.wait()
    result = json.loads(out.strip().splitlines()[-1])
    bundle = Path(result["path"])
    ours_file = extract_artifact(bundle, f"artifacts/pcap/{pair.agent_if}.pcap", tmp / "ours.pcap")
    manifest = json.loads((bundle.parent / f"{result['bundle_id']}.manifest.json").read_bytes())
    details = manifest["collectors"][0]["details"]
    n_ours, n_tcpdump = count_pcap(ours_file), count_pcap(tcpdump_file)
    tcpdump_dropped = 0
    for ln in stats.splitlines():
        if "dropped by kernel" in ln:
            tcpdump_dropped = int(ln.split()[0])
    shutil.rmtree(spool, ignore_errors=True)
    return {
        "sent": sent, "send_pps": sent / secs,
        "dfir": n_ours, "tcpdump": n_tcpdump,
        "dfir_dropped": details["kernel_dropped"], "tcpdump_dropped": tcpdump_dropped,
        "ratio": n_ours / n_tcpdump if n_tcpdump else float("nan"),
        "tcpdump_cpu": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
        "dfir_cpu": (r2.ru_utime + r2.ru_stime) - (r1.ru_utime + r1.ru_stime),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--senders", type=int, default=2, help="parallel flood processes")
    ap.add_argument("--ring", choices=["yes", "no"], default="yes",
                    help="dfir-ar capture mode: TPACKET_V3 ring (default) or recvmsg")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("tcpdump") is None:
        print("needs root and tcpdump")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="pc-bench-pcap-"))
    runs = []
    try:
        with net_pair("pc") as pair:
            for i in range(args.reps):
                r = one_run(pair, tmp, args.packets, args.senders, args.ring)
                runs.append(r)
                print(f"run {i + 1}: sent {r['sent']} at {r['send_pps']:,.0f} pps | "
                      f"tcpdump {r['tcpdump']} (kernel dropped {r['tcpdump_dropped']}) | "
                      f"dfir-ar {r['dfir']} (kernel dropped {r['dfir_dropped']}) | "
                      f"ratio {r['ratio']:.4f} | CPU s tcpdump {r['tcpdump_cpu']:.2f}, dfir-ar "
                      f"{r['dfir_cpu']:.2f} (incl. Python start-up and sealing)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"median: sent {med['sent']:.0f} at {med['send_pps']:,.0f} pps; tcpdump "
          f"{med['tcpdump']:.0f}, dfir-ar {med['dfir']:.0f}; ratio {med['ratio']:.4f} "
          f"(target >= 0.95); CPU s tcpdump {med['tcpdump_cpu']:.2f}, dfir-ar "
          f"{med['dfir_cpu']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
