"""The plain iptables backend: rules live only in its own chain, never in INPUT itself, and
reconcile removes duplicates an admin (or a crashed run) left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfir_ar.responder import LiveEntry
from responders.firewall_drop import FirewallDrop
from tests.conftest import require_tool
from tests.containment.conftest import InNetns, agent_run, context, protected, req
from tests.netns import NetPair


@pytest.mark.root
def test_rules_stay_in_the_dedicated_chain_and_duplicates_are_reconciled(
    pair: NetPair, agent: InNetns, tmp_path: Path
) -> None:
    require_tool("iptables", "ip6tables")
    fw = agent(FirewallDrop, context(tmp_path, protected(pair), backend="iptables"))
    try:
        request = req(pair.a4, timeout=60)
        agent(fw.add, request)
        agent(fw.add, request)  # a repeat add does not add a second rule
        rules = agent_run(pair, "iptables", "-S", "DFIR_AR").splitlines()
        assert rules.count(f"-A DFIR_AR -s {pair.a4}/32 -j DROP") == 1
        assert rules[1:] == [
            "-A DFIR_AR -s 127.0.0.0/8 -j RETURN",
            f"-A DFIR_AR -s {pair.b4}/32 -j RETURN",
            f"-A DFIR_AR -s {pair.a4}/32 -j DROP",
        ]
        input_rules = agent_run(pair, "iptables", "-S", "INPUT").splitlines()
        assert input_rules == ["-P INPUT ACCEPT", "-A INPUT -j DFIR_AR"]

        agent_run(pair, "iptables", "-A", "DFIR_AR", "-s", pair.a4, "-j", "DROP")
        live = [LiveEntry(request=request, state={}, remaining=30.0)]
        agent(fw.reconcile, live)
        rules = agent_run(pair, "iptables", "-S", "DFIR_AR").splitlines()
        assert rules.count(f"-A DFIR_AR -s {pair.a4}/32 -j DROP") == 1
        assert not pair.ping_ok(pair.b4)

        agent(fw.delete, request, {})
        assert pair.reachable(pair.b4)
    finally:
        agent(fw.teardown)
    assert "DFIR_AR" not in agent_run(pair, "iptables", "-S")


@pytest.mark.root
def test_kill_9_then_reconcile_without_kernel_expiry(
    pair: NetPair, agent: InNetns, tmp_path: Path
) -> None:
    """No kernel expiry here: after a crash the rules stay until the restarted service's
    reconcile makes the chain exactly the ledger's live entries."""
    import signal
    import subprocess
    import sys

    from dfir_ar.responder import Request, Target
    from tests.containment.crash_helper import addresses

    require_tool("iptables", "ip6tables")
    count = 500
    done = subprocess.run(
        pair.agent_argv([sys.executable, "-m", "tests.containment.crash_helper",
                         "--backend", "iptables", "--count", str(count),
                         "--short", "1", "--long", "1"]),
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    fw = agent(FirewallDrop, context(tmp_path, protected(pair), backend="iptables"))
    try:
        assert len(agent(fw.active)) == count, "no expiry: every rule outlived the crash"
        known = addresses(count)[:50]
        live = [LiveEntry(Request("firewall-drop", Target(srcip=a)), {}, 60.0) for a in known]
        report = agent(fw.reconcile, live)
        assert report.removed_orphans == count - 50
        drops = [r for r in agent_run(pair, "iptables", "-S", "DFIR_AR").splitlines()
                 if r.endswith("-j DROP")]
        assert sorted(drops) == sorted(f"-A DFIR_AR -s {a}/32 -j DROP" for a in known)
    finally:
        agent(fw.teardown)
