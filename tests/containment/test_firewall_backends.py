"""Behaviour every firewall-drop backend must have, checked with real packets between two
network namespaces: block, unblock, IPv6, the allow list, purge repair, reconcile."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfir_ar.errors import Refused
from dfir_ar.netfilter import Block
from dfir_ar.responder import LiveEntry
from dfir_ar.validate import parse_ip
from responders.firewall_drop import FirewallDrop
from tests.conftest import require_tool
from tests.containment.conftest import InNetns, agent_run, context, protected, req
from tests.netns import NetPair

BACKENDS = ["nftables", "ipset", "iptables"]
TOOLS = {"nftables": ("nft",), "ipset": ("ipset", "iptables"), "iptables": ("iptables",)}


def _make(agent: InNetns, pair: NetPair, tmp_path: Path, backend: str, *extra: str) -> FirewallDrop:
    require_tool(*TOOLS[backend])
    ctx = context(tmp_path, protected(pair, *extra), backend=backend, table="dfir_ar")
    return agent(FirewallDrop, ctx)


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
def test_block_then_unblock_ipv4_and_ipv6(
    pair: NetPair, agent: InNetns, tmp_path: Path, backend: str
) -> None:
    fw = _make(agent, pair, tmp_path, backend)
    try:
        assert pair.reachable(pair.b4) and pair.reachable(pair.b6), "namespaces must talk before"
        state4 = agent(fw.add, req(pair.a4, timeout=60))
        state6 = agent(fw.add, req(pair.a6, timeout=60))
        assert state4["backend"] == backend and state4["addr"] == pair.a4
        assert agent(fw.active) == {pair.a4, pair.a6}
        assert not pair.ping_ok(pair.b4), "IPv4 from the attacker must be dropped"
        assert not pair.ping_ok(pair.b6), "IPv6 from the attacker must be dropped"

        agent(fw.delete, req(pair.a4), state4)
        agent(fw.delete, req(pair.a6), state6)
        assert agent(fw.active) == set()
        assert pair.reachable(pair.b4) and pair.reachable(pair.b6)
        # delete is quiet when the block is already gone
        agent(fw.delete, req(pair.a4), state4)
    finally:
        agent(fw.teardown)


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
def test_white_listed_address_is_never_blocked(
    pair: NetPair, agent: InNetns, tmp_path: Path, backend: str
) -> None:
    fw = _make(agent, pair, tmp_path, backend, f"{pair.a4}/32", "2001:db8:100::/64")
    try:
        with pytest.raises(Refused, match="protected"):
            agent(fw.add, req(pair.a4, timeout=60))
        result = agent(fw.add_many, [req(pair.a6, timeout=60), req("198.18.0.9", timeout=60)])
        assert [r.target.srcip for r, _ in result.added] == [parse_ip("198.18.0.9")]
        assert len(result.refused) == 1
        # Defence in depth: even when the Python check is bypassed and the address lands in the
        # block list, the kernel's allow list lets it through.
        agent(fw.backend.add, [Block(parse_ip(pair.a4), 60), Block(parse_ip(pair.a6), 60)])
        assert pair.a4 in agent(fw.active)
        assert pair.reachable(pair.b4) and pair.reachable(pair.b6)
    finally:
        agent(fw.teardown)


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
def test_purged_ruleset_is_detected_and_repaired(
    pair: NetPair, agent: InNetns, tmp_path: Path, backend: str
) -> None:
    require_tool("nft")
    fw = _make(agent, pair, tmp_path, backend)
    try:
        request = req(pair.a4, timeout=120)
        state = agent(fw.add, request)
        live = [LiveEntry(request=request, state=state, remaining=100.0)]
        assert agent(fw.check_and_repair, live) is False
        assert not pair.ping_ok(pair.b4)

        # What a config-management run does; with iptables-nft it also wipes the xtables chains.
        agent_run(pair, "nft", "flush", "ruleset")
        if backend == "ipset":
            agent_run(pair, "ipset", "destroy")
        assert pair.reachable(pair.b4), "the purge really lifted the block"

        assert agent(fw.check_and_repair, live) is True
        assert agent(fw.active) == {pair.a4}
        assert not pair.ping_ok(pair.b4), "repair restored the block"
        assert agent(fw.check_and_repair, live) is False

        # Purged again, and the next thing that happens is a new block: the add itself
        # notices, rebuilds, and restores the block it already held.
        agent_run(pair, "nft", "flush", "ruleset")
        if backend == "ipset":
            agent_run(pair, "ipset", "destroy")
        agent(fw.add, req(pair.a6, timeout=120))
        assert agent(fw.active) == {pair.a4, pair.a6}
        assert agent(fw.backend.intact)
        assert not pair.ping_ok(pair.b4) and not pair.ping_ok(pair.b6)
    finally:
        agent(fw.teardown)


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
def test_reconcile_leaves_exactly_the_live_entries(
    pair: NetPair, agent: InNetns, tmp_path: Path, backend: str
) -> None:
    fw = _make(agent, pair, tmp_path, backend)
    try:
        orphan = [req(f"198.18.1.{i}", timeout=300) for i in range(1, 21)]
        agent(fw.add_many, orphan)
        live_reqs = [req(f"198.18.2.{i}", timeout=300) for i in range(1, 31)]
        live_reqs.append(req("2001:db8:ff::7", timeout=300))
        agent(fw.add_many, live_reqs[:10])  # some already there, most missing
        live = [LiveEntry(request=r, state={}, remaining=200.0) for r in live_reqs]
        # an entry that ran out while the service was down is not re-added
        live.append(LiveEntry(request=req("198.18.3.1"), state={}, remaining=-5.0))

        report = agent(fw.reconcile, live)
        want = {str(r.target.srcip) for r in live_reqs}
        assert agent(fw.active) == want
        assert report.readded == len(want) - 10
        assert report.removed_orphans == 20
        # reconcile twice: nothing to do, and no duplicates appear
        again = agent(fw.reconcile, live)
        assert (again.readded, again.removed_orphans) == (0, 0)
        assert agent(fw.active) == want
    finally:
        agent(fw.teardown)


@pytest.mark.root
def test_two_commands_share_an_address_without_undoing_each_other(
    pair: NetPair, agent: InNetns, tmp_path: Path
) -> None:
    """"firewall-drop" (short) and "firewall-drop-day" (long) both block the attacker: the
    kernel element carries the longer time, the short one's undo keeps the block, and a
    reconcile of one command's ledger entries keeps the other's."""
    require_tool("nft")
    ctx = context(tmp_path, protected(pair), backend="nftables")
    short_fw = agent(FirewallDrop, ctx)
    day_fw = agent(FirewallDrop, ctx)
    try:
        short_req = req(pair.a4, timeout=30, command="firewall-drop")
        day_req = req(pair.a4, timeout=86_400, command="firewall-drop-day")
        agent(day_fw.add, day_req)
        agent(short_fw.add, short_req)
        left = agent(short_fw.backend.active)[parse_ip(pair.a4)]
        assert left is not None and left > 80_000, "the longer claim sets the kernel timeout"

        agent(short_fw.reconcile, [LiveEntry(request=short_req, state={}, remaining=20.0)])
        assert agent(short_fw.active) == {pair.a4}
        agent(short_fw.delete, short_req, {})
        assert agent(short_fw.active) == {pair.a4}, "the day-long block is still held"
        assert not pair.ping_ok(pair.b4)
        agent(day_fw.delete, day_req, {})
        assert agent(day_fw.active) == set()
        assert pair.reachable(pair.b4)
    finally:
        agent(short_fw.teardown)


@pytest.mark.root
def test_backend_choice(pair: NetPair, agent: InNetns, tmp_path: Path) -> None:
    """auto takes nftables where libnftables works; a configured fallback is honoured."""
    from dfir_ar.netfilter import make_backend, tools_present

    assert tools_present() == {"nftables": True, "ipset": True, "iptables": True}
    assert agent(make_backend, "auto", []).name == "nftables"
    assert agent(make_backend, "ipset", []).name == "ipset"
    assert agent(make_backend, "iptables", []).name == "iptables"
    fw = _make(agent, pair, tmp_path, "nftables")
    assert fw.backend.describe() == "nftables table inet dfir_ar (libnftables, kernel timeouts)"


@pytest.mark.root
def test_foreign_table_with_our_name_gives_an_actionable_error(
    pair: NetPair, agent: InNetns, tmp_path: Path
) -> None:
    from dfir_ar.errors import ExecutionError

    require_tool("nft")
    agent_run(pair, "nft", "add", "table", "inet", "dfir_ar")
    agent_run(pair, "nft", "add", "set", "inet", "dfir_ar", "block4", "{ type ipv4_addr; }")
    fw = _make(agent, pair, tmp_path, "nftables")
    try:
        with pytest.raises(ExecutionError, match=r"different layout .*nft delete table inet dfir_ar"):
            agent(fw.add, req(pair.a4, timeout=60))
    finally:
        agent(fw.teardown)


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
def test_add_after_a_silent_purge_restores_enforcement(
    pair: NetPair, agent: InNetns, tmp_path: Path, backend: str
) -> None:
    """`nft flush ruleset` leaves the ipsets but removes the rules that match them, so an add
    succeeds and enforces nothing; the check piggybacked on the add catches and repairs it."""
    require_tool("nft", *TOOLS[backend])
    ctx = context(tmp_path, protected(pair), backend=backend, verify_interval=0)
    fw = agent(FirewallDrop, ctx)
    try:
        agent(fw.add, req(pair.a4, timeout=120))
        agent_run(pair, "nft", "flush", "ruleset")
        assert pair.reachable(pair.b4)
        agent(fw.add, req(pair.a6, timeout=120))
        assert agent(fw.backend.intact)
        assert agent(fw.active) == {pair.a4, pair.a6}
        assert not pair.ping_ok(pair.b4) and not pair.ping_ok(pair.b6)
    finally:
        agent(fw.teardown)
