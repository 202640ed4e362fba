"""Kernel-side expiry: a block lifts at its time with dfir-ar gone (OSSEC/Wazuh keep the undo in
memory only, so a crash leaves their blocks forever)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfir_ar.responder import LiveEntry, Request, Target
from responders.firewall_drop import FirewallDrop
from tests.conftest import require_tool
from tests.containment.conftest import InNetns, context, protected, req
from tests.containment.crash_helper import addresses
from tests.netns import NetPair

REPO = Path(__file__).resolve().parents[2]
EXPIRING = {"nftables": ("nft",), "ipset": ("ipset", "iptables")}


def _wait_until(predicate: object, limit: float) -> float:
    """Poll ``predicate`` (bounded); return the seconds it took, or raise."""
    assert callable(predicate)
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {limit}s")


@pytest.mark.root
@pytest.mark.parametrize("backend", sorted(EXPIRING))
def test_block_expires_in_the_kernel_without_dfir_ar(
    pair: NetPair, agent: InNetns, tmp_path: Path, backend: str
) -> None:
    require_tool(*EXPIRING[backend])
    fw = agent(FirewallDrop, context(tmp_path, protected(pair), backend=backend))
    try:
        added = time.monotonic()  # before the add: a slow add cannot make it look early
        agent(fw.add, req(pair.a4, timeout=2))
        agent(fw.add, req(pair.a6, timeout=2))
        assert not pair.ping_ok(pair.b4, wait=0.5)
        # No dfir-ar code runs from here on: only the kernel can lift the block.
        _wait_until(lambda: pair.ping_ok(pair.b4, wait=0.3), limit=6)
        assert time.monotonic() - added >= 1.9, "lifted too early"
        _wait_until(lambda: pair.ping_ok(pair.b6, wait=0.3), limit=3)
        assert agent(fw.active) == set()
    finally:
        agent(fw.teardown)


@pytest.mark.root
@pytest.mark.parametrize("backend", sorted(EXPIRING))
def test_refresh_extends_the_kernel_timeout(
    pair: NetPair, agent: InNetns, tmp_path: Path, backend: str
) -> None:
    require_tool(*EXPIRING[backend])
    fw = agent(FirewallDrop, context(tmp_path, protected(pair), backend=backend))
    try:
        request = req(pair.a4, timeout=30)
        state = agent(fw.add, request)
        agent(fw.refresh, request, state, 900.0)
        remaining = agent(fw.backend.active)
        assert len(remaining) == 1
        left = next(iter(remaining.values()))
        assert left is not None and 800 < left <= 900
        # a repeat add of the same address with a shorter time takes that time (no duplicate)
        agent(fw.add, req(pair.a4, timeout=40))
        left = next(iter(agent(fw.backend.active).values()))
        assert left is not None and left <= 40
        # timeout 0 (Wazuh: no undo) is an element without expiry
        agent(fw.refresh, request, state, 0)
        assert agent(fw.backend.active) == {request.target.srcip: None}
    finally:
        agent(fw.teardown)


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize(("backend", "count"), [("nftables", 10_000), ("ipset", 2_000)])
def test_kill_9_with_many_blocks_then_expiry_and_clean_reconcile(
    pair: NetPair, agent: InNetns, tmp_path: Path, backend: str, count: int
) -> None:
    """The service dies by SIGKILL holding ``count`` blocks: each still expires at its time, and
    a new service's reconcile leaves exactly the ledger's entries, no orphans, no duplicates."""
    require_tool(*EXPIRING[backend])
    short, long = 3.0, 7.0
    started = time.monotonic()
    done = subprocess.run(
        pair.agent_argv([sys.executable, "-m", "tests.containment.crash_helper",
                         "--backend", backend, "--count", str(count),
                         "--short", str(short), "--long", str(long)]),
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.split() == ["ready", str(count)]

    fw = agent(FirewallDrop, context(tmp_path, protected(pair), backend=backend))
    try:
        all_addrs = addresses(count)
        assert len(agent(fw.active)) == count
        # the short half is gone after its time, the long half still there
        _wait_until(lambda: len(agent(fw.active)) == count // 2, limit=short + 4)
        assert time.monotonic() - started >= short - 0.5
        left = agent(fw.active)
        assert left == {str(a) for i, a in enumerate(all_addrs) if i % 2 == 1}

        # Restart: the ledger knows only the first 100 long blocks (say the crash came before
        # the rest were written); everything else in the kernel is an orphan.
        known = [a for i, a in enumerate(all_addrs) if i % 2 == 1][:100]
        live = [
            LiveEntry(Request(command="firewall-drop", target=Target(srcip=a)), {}, 60.0)
            for a in known
        ]
        report = agent(fw.reconcile, live)
        assert agent(fw.active) == {str(a) for a in known}
        assert report.removed_orphans == count // 2 - 100
        assert report.readded == 0
        # each re-added block carries the remaining time from the ledger, not its old timeout
        times = agent(fw.backend.active).values()
        assert all(t is not None and 50 < t <= 60 for t in times)
    finally:
        agent(fw.teardown)
