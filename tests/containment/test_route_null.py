"""route-null in a namespace pair: the blackhole route stops the agent's replies to the attacker,
only dfir-ar's own routes are listed and removed, and reconcile re-adds and cleans up."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfir_ar.errors import Refused
from dfir_ar.responder import LiveEntry
from responders.route_null import RouteNull
from tests.containment.conftest import InNetns, agent_run, context, protected, req
from tests.netns import NetPair


def _rn(agent: InNetns, pair: NetPair, tmp_path: Path, *extra: str) -> RouteNull:
    return agent(RouteNull, context(tmp_path, protected(pair, *extra)))


@pytest.mark.root
def test_blackhole_blocks_and_delete_restores_ipv4_ipv6(
    pair: NetPair, agent: InNetns, tmp_path: Path
) -> None:
    rn = _rn(agent, pair, tmp_path)
    assert pair.reachable(pair.b4) and pair.reachable(pair.b6)
    r4, r6 = req(pair.a4, 60, "route-null"), req(pair.a6, 60, "route-null")
    s4 = agent(rn.add, r4)
    s6 = agent(rn.add, r6)
    assert agent(rn.active) == {pair.a4, pair.a6}
    assert "blackhole" in agent_run(pair, "ip", "route", "show", pair.a4)
    assert not pair.ping_ok(pair.b4)
    assert not pair.ping_ok(pair.b6)
    agent(rn.add, r4)  # idempotent: already ours
    agent(rn.delete, r4, s4)
    agent(rn.delete, r6, s6)
    assert agent(rn.active) == set()
    assert pair.reachable(pair.b4) and pair.reachable(pair.b6)
    agent(rn.delete, r4, s4)  # quiet when already gone


@pytest.mark.root
def test_protected_and_foreign_routes_are_left_alone(
    pair: NetPair, agent: InNetns, tmp_path: Path
) -> None:
    rn = _rn(agent, pair, tmp_path, "203.0.113.0/24")
    with pytest.raises(Refused, match="protected"):
        agent(rn.add, req("203.0.113.50", 60, "route-null"))
    with pytest.raises(Refused, match="protected"):
        agent(rn.add, req(pair.b4, 60, "route-null"))
    # an admin's own host route and blackhole are neither overwritten, listed nor removed
    agent_run(pair, "ip", "route", "add", "198.51.100.77/32", "dev", pair.agent_if)
    agent_run(pair, "ip", "route", "add", "blackhole", "198.51.100.78/32")
    with pytest.raises(Refused, match="did not add"):
        agent(rn.add, req("198.51.100.77", 60, "route-null"))
    assert agent(rn.active) == set()
    agent(rn.reconcile, [])
    routes = agent_run(pair, "ip", "route", "show")
    assert "198.51.100.77 dev" in routes and "blackhole 198.51.100.78" in routes


@pytest.mark.root
def test_reconcile_readds_missing_and_removes_orphans(
    pair: NetPair, agent: InNetns, tmp_path: Path
) -> None:
    rn = _rn(agent, pair, tmp_path)
    live_req = req(pair.a4, 60, "route-null")
    orphan_req = req("2001:db8:ff::9", 60, "route-null")
    agent(rn.add, orphan_req)
    agent(rn.add, live_req)
    agent_run(pair, "ip", "route", "del", "blackhole", f"{pair.a4}/32")  # someone removed it
    assert pair.reachable(pair.b4)
    report = agent(rn.reconcile, [LiveEntry(request=live_req, state={}, remaining=30.0)])
    assert (report.readded, report.removed_orphans) == (1, 1)
    assert agent(rn.active) == {pair.a4}
    assert not pair.ping_ok(pair.b4)
