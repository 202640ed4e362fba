"""firewall-drop vs OSSEC/Wazuh's firewall-drop, in a network namespace pair, in one run.

    sudo .venv/bin/python -m bench.firewall            # full run (about 2 minutes)
    sudo .venv/bin/python -m bench.firewall --quick    # peer timed on a 1,000 sample, scaled

Measures, each repeated ``--reps`` times and reported as the median:
  1. blocking 10,000 addresses (198.18.0.0/15): dfir-ar (nftables, one libnftables transaction;
     ipset, one ``ipset restore``; nftables one add() per address) vs one
     ``iptables -I INPUT -s IP -j DROP`` process per address (what OSSEC's and Wazuh's script do,
     minus their FORWARD rule, so the peer is timed generously);
  2. one more block with 100,000 already in place: dfir-ar add() vs one ``iptables -I``;
  3. packet path: ping round trip (``-c 200 -i 0.01``, bounded) with no blocks, with 100,000
     nftables set elements, and with 100,000 iptables rules;
  4. the 10,000 as orders through the executor (ledger intent and applied mark, three
     active-responses.log lines and an audit record each), with the executor's add_many batches
     and with one add() per order, against the same iptables -I per address; then all 10,000
     expiring at the same second, lifted with delete_many batches and with one delete() each.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import ipaddress
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from dfir_ar.clock import FakeClock
from dfir_ar.config.models import Config
from dfir_ar.executor import Executor
from dfir_ar.ids import new_id
from dfir_ar.ledger import Ledger
from dfir_ar.order import Order
from dfir_ar.responder import Request, ResponderContext, Target
from responders.firewall_drop import FirewallDrop
from tests.netns import NetPair, net_pair

T = TypeVar("T")
BASE = int(ipaddress.IPv4Address("198.18.0.0"))
CLONE_NEWNET = 0x40000000


def addrs(start: int, count: int) -> list[ipaddress.IPv4Address]:
    return [ipaddress.IPv4Address(BASE + 1 + start + i) for i in range(count)]


class InNetns:
    """Callables run on one thread that entered the namespace (libnftables and forked tools act
    on the namespace of the calling thread)."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=self._enter, initargs=(name,))

    @staticmethod
    def _enter(name: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)

    def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result(timeout=900)

    def close(self) -> None:
        self._pool.shutdown()


def responder(backend: str) -> FirewallDrop:
    ctx = ResponderContext(
        state_dir=Path(tempfile.gettempdir()),
        white_list=[ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("198.51.100.5/32")],
        options={"backend": backend},
        log=logging.getLogger("bench"),
    )
    return FirewallDrop(ctx)


def requests(addresses: list[ipaddress.IPv4Address], timeout: float = 3600) -> list[Request]:
    return [Request(command="firewall-drop", target=Target(srcip=a), timeout=timeout) for a in addresses]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ipt(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "10", *args],
                   check=True, capture_output=True, timeout=120)


def iptables_one_per_address(ns: str, addresses: list[ipaddress.IPv4Address]) -> float:
    """The OSSEC/Wazuh way: a new iptables process per address. The ``ip netns exec`` wrapper is
    paid once (one shell loop over xargs would hide nothing); each address is its own iptables
    process, as in their scripts."""
    script = "".join(f"{a}\n" for a in addresses).encode()
    start = time.perf_counter()
    subprocess.run(
        ["ip", "netns", "exec", ns, "xargs", "-I", "{}", "iptables", "-w", "10", "-I", "INPUT",
         "-s", "{}", "-j", "DROP"],
        input=script, check=True, capture_output=True, timeout=3600,
    )
    return time.perf_counter() - start


def iptables_flush(ns: str) -> None:
    ipt(ns, "-F", "INPUT")


def iptables_bulk(ns: str, addresses: list[ipaddress.IPv4Address]) -> None:
    """Load many INPUT rules fast (setup only, not measured)."""
    text = "*filter\n" + "".join(f"-A INPUT -s {a}/32 -j DROP\n" for a in addresses) + "COMMIT\n"
    subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "-w", "10", "--noflush"],
                   input=text.encode(), check=True, capture_output=True, timeout=600)


def ping_rtt(pair: NetPair, count: int) -> float:
    """Average round trip in ms of a bounded fast ping from the attacker to the agent."""
    done = subprocess.run(
        ["ip", "netns", "exec", pair.attacker, "ping", "-n", "-q", "-c", str(count), "-i", "0.01",
         "-w", str(10 + count // 50), pair.b4],
        capture_output=True, text=True, timeout=30 + count, check=False,
    )
    for line in done.stdout.splitlines():
        if "min/avg/max" in line:
            return float(line.split("=")[1].split("/")[1])
    raise RuntimeError(f"ping failed: {done.stdout} {done.stderr}")


def med(values: list[float]) -> float:
    return statistics.median(values)


@contextmanager
def bench_env() -> Iterator[tuple[NetPair, InNetns]]:
    with net_pair("fwb") as pair:
        runner = InNetns(pair.agent)
        try:
            yield pair, runner
        finally:
            runner.close()


def executor_flood(count: int, batched: bool) -> tuple[float, float]:
    """Seconds from handing ``count`` new firewall-drop orders to a real Executor (threads
    started inside the agent namespace) until every one has run, all ok; then seconds from
    their common expiry (a FakeClock moved past it) until every block is lifted and retired."""
    with bench_env() as (_pair, agent), tempfile.TemporaryDirectory(prefix="bench-fw-") as tmp:
        root = Path(tmp)
        cfg = Config.model_validate({
            "global": {"state_dir": str(root / "state"), "log_dir": str(root / "log"),
                       "control_socket": str(root / "c.sock"), "max_active_responses": 10**6},
            "command": [{"name": "firewall-drop", "executable": "firewall-drop",
                         "expect": ["srcip"], "timeout_allowed": True}],
            "active_response": [{"command": "firewall-drop", "rules_id": [5712],
                                 "timeout": 3600}],
            "responders": {"firewall-drop": {"backend": "nftables"}},
            "evidence": {"store": f"file://{root / 'evidence'}"},
        })
        ledger = Ledger.open(cfg.global_.state_dir)
        saved = FirewallDrop.batch_add, FirewallDrop.batch_delete
        FirewallDrop.batch_add = FirewallDrop.batch_delete = batched
        clock = FakeClock(time.time())
        try:
            ex = agent(lambda: Executor(cfg, ledger, clock=clock))
            orders = [Order(id=new_id(), command="firewall-drop", target=Target(srcip=a),
                            timeout=3600.0) for a in addrs(0, count)]
            start = time.perf_counter()
            tickets = agent(ex.accept, orders)
            outcomes = [t.result(timeout=600).outcome for t in tickets]
            took = time.perf_counter() - start
            clock.advance(3601)
            start = time.perf_counter()
            lifted = [t.result(timeout=600).outcome for t in agent(ex.expire_due)]
            lift_took = time.perf_counter() - start
            left = ledger.count_entries()
            ex.shutdown(lift=False)
        finally:
            FirewallDrop.batch_add, FirewallDrop.batch_delete = saved
            ledger.close()
        if outcomes.count("ok") != count:
            raise SystemExit(f"executor flood: {outcomes.count('ok')}/{count} ok")
        if lifted.count("ok") != count or left:
            raise SystemExit(f"executor flood: {lifted.count('ok')}/{count} lifted, {left} left")
        return took, lift_took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000, help="addresses in the batch test")
    ap.add_argument("--big", type=int, default=100_000, help="blocks in place for tests 2 and 3")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per measurement")
    ap.add_argument("--peer-reps", type=int, default=3, help="repetitions of the slow iptables run")
    ap.add_argument("--quick", action="store_true",
                    help="time the iptables peer on a 1,000-address sample and scale it linearly "
                         "(underestimates the peer: its per-rule cost grows with the rule count)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/firewall needs root (network namespaces, nftables)", file=sys.stderr)
        return 2

    res: dict[str, Any] = {"count": args.count, "big": args.big, "reps": args.reps,
                           "loadavg_start": os.getloadavg()[0]}
    batch = addrs(0, args.count)
    with bench_env() as (pair, agent):
        ns = pair.agent
        fw = agent(responder, "nftables")
        fw_ipset = agent(responder, "ipset")

        # 1. 10k blocks ------------------------------------------------------------------------
        nft_batch, nft_single, ipset_batch = [], [], []
        # The orders exist before the batch (the executor has them from the ledger); building
        # them is not timed, as the peer's address list is not.
        batch_reqs = requests(batch)
        for _ in range(args.reps):
            agent(fw.teardown)
            nft_batch.append(agent(timed, functools.partial(fw.add_many, batch_reqs)))
            assert len(agent(fw.active)) == args.count
            agent(fw.teardown)

            def one_by_one() -> None:
                for r in batch_reqs:
                    fw.add(r)

            nft_single.append(agent(timed, one_by_one))
            agent(fw.teardown)
            agent(fw_ipset.teardown)
            ipset_batch.append(agent(timed, functools.partial(fw_ipset.add_many, batch_reqs)))
            assert len(agent(fw_ipset.active)) == args.count
            agent(fw_ipset.teardown)

        peer: list[float] = []
        sample = 1_000 if args.quick else args.count
        for _ in range(args.peer_reps):
            iptables_flush(ns)
            took = iptables_one_per_address(ns, batch[:sample])
            peer.append(took * args.count / sample)
            iptables_flush(ns)
        res["batch"] = {
            "dfir_ar_nftables_add_many_s": med(nft_batch),
            "dfir_ar_ipset_add_many_s": med(ipset_batch),
            "dfir_ar_nftables_add_each_s": med(nft_single),
            "iptables_I_per_address_s": med(peer),
            "iptables_scaled_from": sample,
        }

        # 2. single add with 100k in place -------------------------------------------------------
        big = addrs(args.count, args.big)
        agent(fw.teardown)
        agent(fw.add_many, requests(big))
        extra = addrs(args.count + args.big, 50 * args.reps)
        one_add = [agent(timed, functools.partial(fw.add, r)) * 1000 for r in requests(extra)]
        iptables_bulk(ns, big)
        peer_one = []
        for i in range(args.reps):
            ip = str(addrs(args.count + args.big + 10_000 + i, 1)[0])
            # forked from the thread inside the namespace: no `ip netns exec` cost in the timing
            insert = functools.partial(
                subprocess.run, ["iptables", "-w", "10", "-I", "INPUT", "-s", ip, "-j", "DROP"],
                check=True, capture_output=True, timeout=120,
            )
            peer_one.append(agent(timed, insert) * 1000)
        res["single_at_big"] = {"dfir_ar_nftables_ms": med(one_add), "iptables_I_ms": med(peer_one)}

        # 3. packet path --------------------------------------------------------------------------
        pings = 200
        with_rules = [ping_rtt(pair, pings) for _ in range(args.reps)]
        iptables_flush(ns)
        with_set = [ping_rtt(pair, pings) for _ in range(args.reps)]
        agent(fw.teardown)
        empty = [ping_rtt(pair, pings) for _ in range(args.reps)]
        res["packet_path_ms"] = {
            "no_blocks": med(empty),
            "nftables_set_big": med(with_set),
            "iptables_rules_big": med(with_rules),
        }
        agent(fw_ipset.teardown)

    # 4. the same addresses as orders through the executor ---------------------------------
    batched = [executor_flood(args.count, True) for _ in range(args.reps)]
    single = [executor_flood(args.count, False) for _ in range(args.reps)]
    res["executor"] = {"batched_s": med([b[0] for b in batched]),
                       "one_add_each_s": med([s[0] for s in single]),
                       "lift_batched_s": med([b[1] for b in batched]),
                       "lift_one_each_s": med([s[1] for s in single])}

    res["loadavg_end"] = os.getloadavg()[0]
    b, s, p = res["batch"], res["single_at_big"], res["packet_path_ms"]
    scaled = f" (scaled from {sample})" if sample != args.count else ""
    print(f"bench/firewall — medians of {args.reps} runs (peer batch: {args.peer_reps} runs); "
          f"load average {res['loadavg_start']:.1f} at start, {res['loadavg_end']:.1f} at end "
          f"on {os.cpu_count()} CPUs")
    print(f"1. block {args.count:,} addresses")
    print(f"   dfir-ar nftables add_many      {b['dfir_ar_nftables_add_many_s']:8.3f} s")
    print(f"   dfir-ar ipset add_many         {b['dfir_ar_ipset_add_many_s']:8.3f} s")
    print(f"   dfir-ar nftables add() each    {b['dfir_ar_nftables_add_each_s']:8.3f} s")
    print(f"   iptables -I per address{scaled:<8}{b['iptables_I_per_address_s']:8.3f} s")
    peer_s = b["iptables_I_per_address_s"]
    print(f"   ratio iptables / nftables add_many: {peer_s / b['dfir_ar_nftables_add_many_s']:.0f}x"
          f"   / ipset: {peer_s / b['dfir_ar_ipset_add_many_s']:.0f}x"
          f"   / add() each: {peer_s / b['dfir_ar_nftables_add_each_s']:.0f}x")
    print(f"2. one more block with {args.big:,} in place")
    print(f"   dfir-ar nftables add()         {s['dfir_ar_nftables_ms']:8.2f} ms")
    print(f"   iptables -I                    {s['iptables_I_ms']:8.2f} ms")
    print(f"   ratio: {s['iptables_I_ms'] / s['dfir_ar_nftables_ms']:.0f}x")
    print(f"3. ping round trip (avg of {pings} pings -i 0.01)")
    print(f"   no blocks                      {p['no_blocks']:8.3f} ms")
    print(f"   {args.big:,} nftables set elements  {p['nftables_set_big']:8.3f} ms"
          f"  ({p['nftables_set_big'] / p['no_blocks']:.2f}x of empty)")
    print(f"   {args.big:,} iptables rules         {p['iptables_rules_big']:8.3f} ms"
          f"  ({p['iptables_rules_big'] / p['no_blocks']:.2f}x of empty)")
    e = res["executor"]
    print(f"4. {args.count:,} new-block orders through the executor (ledger, logs, audit each)")
    print(f"   add_many batches               {e['batched_s']:8.3f} s")
    print(f"   one add() per order            {e['one_add_each_s']:8.3f} s")
    print(f"   ratio iptables -I per address / batched: {peer_s / e['batched_s']:.0f}x")
    print(f"   all {args.count:,} expiring at the same second, lifted and retired:")
    print(f"   delete_many batches            {e['lift_batched_s']:8.3f} s")
    print(f"   one delete() per entry         {e['lift_one_each_s']:8.3f} s")
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
