"""The executor hands a chunk of new firewall-drop blocks to FirewallDrop.add_many, and a burst of
expiries to FirewallDrop.delete_many: one nftables transaction for a flood of attackers, while
every order still gets its own log lines, audit record and ledger row changes; and when the batch
call fails as a whole, they are retried one by one. Real nftables in the agent namespace; the
executor's threads are started from a thread inside it, so they act on its kernel state."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from dfir_ar.arlog import read_audit
from dfir_ar.clock import FakeClock
from dfir_ar.config.models import Config
from dfir_ar.executor import Executor, Ticket
from dfir_ar.ids import new_id
from dfir_ar.ledger import APPLIED, Ledger
from dfir_ar.order import Order
from dfir_ar.responder import BatchResult, Request, Target
from dfir_ar.validate import parse_ip
from responders.firewall_drop import FirewallDrop
from tests.conftest import require_tool
from tests.containment.conftest import InNetns, context, protected, req
from tests.netns import NetPair

COUNT = 300
BASE = int(ipaddress.IPv4Address("198.18.7.0"))


def _config(tmp: Path) -> Config:
    return Config.model_validate({
        "global": {"state_dir": str(tmp / "state"), "log_dir": str(tmp / "log"),
                   "control_socket": str(tmp / "c.sock"), "lift_on_stop": False},
        "command": [{"name": "firewall-drop", "executable": "firewall-drop",
                     "expect": ["srcip"], "timeout_allowed": True}],
        "active_response": [{"command": "firewall-drop", "rules_id": [5712], "timeout": 600}],
        "responders": {"firewall-drop": {"backend": "nftables", "table": "dfir_ar_batch"}},
        "evidence": {"store": f"file://{tmp / 'evidence'}"},
    })


class FailsOnce(FirewallDrop):
    """The real responder, whose first batch call fails as a whole (a transient kernel error)."""

    failed: ClassVar[int] = 0

    def add_many(self, requests: list[Request]) -> BatchResult:  # type: ignore[override]
        if FailsOnce.failed == 0:
            FailsOnce.failed = 1
            raise OSError("simulated: netlink buffer full")
        return super().add_many(requests)


class Burst(FirewallDrop):
    """The real responder, made to behave as a test case needs: its first batch delete fails
    as a whole, and/or each add takes 2 ms as on a loaded host (CI once measured adds above the
    executor's fast-work threshold, and a burst of expiries then went one delete per task)."""

    fail_delete: ClassVar[bool] = False
    failed: ClassVar[int] = 0
    slow: ClassVar[bool] = False

    def add_many(self, requests: list[Request]) -> BatchResult:  # type: ignore[override]
        if Burst.slow:
            time.sleep(0.002 * len(requests))
        return super().add_many(requests)

    def delete_many(self, items: list[tuple[Request, dict[str, object]]]) -> None:  # type: ignore[override]
        if Burst.fail_delete and Burst.failed == 0:
            Burst.failed = 1
            raise OSError("simulated: netlink buffer full")
        super().delete_many(items)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def executor(pair: NetPair, agent: InNetns, tmp_path: Path, clock: FakeClock) -> Iterator[Executor]:
    require_tool("nft")
    cfg = _config(tmp_path)
    ledger = Ledger.open(cfg.global_.state_dir)
    ex = agent(Executor, cfg, ledger, protected=protected(pair), clock=clock)
    try:
        yield ex
    finally:
        ex.shutdown(lift=True)
        ledger.close()


def _orders(pair: NetPair) -> list[Order]:
    addrs = [pair.a4] + [str(ipaddress.IPv4Address(BASE + i)) for i in range(1, COUNT)]
    return [Order(id=new_id(), command="firewall-drop", target=Target(srcip=parse_ip(a)),
                  timeout=600.0) for a in addrs]


def _run(agent: InNetns, ex: Executor, orders: list[Order]) -> set[str]:
    tickets: list[Ticket] = agent(ex.accept, orders)
    results = [t.result(timeout=60) for t in tickets]
    assert [r.outcome for r in results] == ["ok"] * len(orders), {r.error for r in results}
    ex.flush()
    ex.flush()  # the applied marks the executions posted
    active = agent(ex.responder(ex.command("firewall-drop")).active)
    assert active is not None, "firewall-drop lists what is in place"
    return {str(a) for a in active}


@pytest.mark.root
def test_a_flood_of_new_blocks_goes_to_the_kernel_in_batches(
    pair: NetPair, agent: InNetns, executor: Executor, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    orders = _orders(pair)
    assert pair.reachable(pair.b4)
    with caplog.at_level(logging.INFO):
        active = _run(agent, executor, orders)
    assert active == {str(o.target.srcip) for o in orders}
    assert not pair.ping_ok(pair.b4), "the attacker must be blocked"
    batches = [r.getMessage() for r in caplog.records if "in one batch" in r.getMessage()]
    assert batches, "add_many was never used"
    assert sum(int(m.split("blocked ")[1].split(" ")[0]) for m in batches) == COUNT
    # Each order is still its own execution in every record.
    audit = read_audit(tmp_path / "log" / "audit.jsonl")
    assert sorted(r["order_id"] for r in audit if r["action"] == "add" and r["outcome"] == "ok") \
        == sorted(o.id for o in orders)
    ar_lines = (tmp_path / "log" / "active-responses.log").read_text().splitlines()
    assert sum(line.endswith(": Starting") for line in ar_lines) == COUNT
    assert sum(line.endswith(": Ended") for line in ar_lines) == COUNT
    entries = executor.ledger.entries()
    assert len(entries) == COUNT and {e.status for e in entries} == {APPLIED}


@pytest.mark.root
def test_a_failed_batch_is_retried_one_by_one_and_nothing_is_lost(
    pair: NetPair, agent: InNetns, executor: Executor, caplog: pytest.LogCaptureFixture,
) -> None:
    FailsOnce.failed = 0
    executor.register_responder("firewall-drop", FailsOnce)
    orders = _orders(pair)
    with caplog.at_level(logging.INFO):
        active = _run(agent, executor, orders)
    assert FailsOnce.failed == 1
    assert any("adding them one by one" in r.getMessage() for r in caplog.records)
    assert active == {str(o.target.srcip) for o in orders}
    assert not pair.ping_ok(pair.b4)
    assert {e.status for e in executor.ledger.entries()} == {APPLIED}


@pytest.mark.root
@pytest.mark.parametrize("fails_once", [False, True])
@pytest.mark.parametrize("slow_host", [False, True])
def test_a_burst_of_expiries_leaves_the_kernel_in_batches(
    pair: NetPair, agent: InNetns, executor: Executor, tmp_path: Path, clock: FakeClock,
    caplog: pytest.LogCaptureFixture, fails_once: bool, slow_host: bool,
) -> None:
    Burst.fail_delete, Burst.failed, Burst.slow = fails_once, 0, slow_host
    executor.register_responder("firewall-drop", Burst)
    orders = _orders(pair)
    assert len(_run(agent, executor, orders)) == COUNT
    assert not pair.ping_ok(pair.b4)
    clock.advance(601)
    with caplog.at_level(logging.INFO):
        undone = [t.result(timeout=60) for t in agent(executor.expire_due)]
    assert [r.outcome for r in undone] == ["ok"] * COUNT, {r.error for r in undone}
    assert agent(executor.responder(executor.command("firewall-drop")).active) == set()
    assert pair.reachable(pair.b4), "the attacker is let through again"
    assert executor.ledger.entries() == []
    messages = [r.getMessage() for r in caplog.records]
    batches = [m for m in messages if "unblocked" in m and "in one batch" in m]
    assert batches, "delete_many was never used"
    if fails_once:
        assert Burst.failed == 1
        assert any("deleting them one by one" in m for m in messages)
    else:
        assert sum(int(m.split("unblocked ")[1].split(" ")[0]) for m in batches) == COUNT
    audit = read_audit(tmp_path / "log" / "audit.jsonl")
    deletes = [r for r in audit if r["action"] == "delete" and r["outcome"] == "ok"]
    assert sorted(r["order_id"] for r in deletes) == sorted(o.id for o in orders)
    ar_lines = (tmp_path / "log" / "active-responses.log").read_text().splitlines()
    assert sum(line.endswith(": Ended") for line in ar_lines) == 2 * COUNT


@pytest.mark.root
def test_delete_many_keeps_an_address_another_command_holds(
    pair: NetPair, agent: InNetns, tmp_path: Path,
) -> None:
    require_tool("nft")
    fw = agent(FirewallDrop, context(tmp_path, protected(pair), backend="nftables",
                                     table="dfir_ar_batch"))
    try:
        extra = str(ipaddress.IPv4Address(BASE + 1))
        agent(fw.add, req(pair.a4, timeout=600, command="firewall-drop"))
        agent(fw.add, req(pair.a4, timeout=600, command="firewall-drop-long"))
        agent(fw.add, req(extra, timeout=600, command="firewall-drop"))
        agent(fw.delete_many, [(req(pair.a4, command="firewall-drop"), {}),
                               (req(extra, command="firewall-drop"), {})])
        assert {str(a) for a in agent(fw.active)} == {pair.a4}
        assert not pair.ping_ok(pair.b4), "still held by firewall-drop-long"
        agent(fw.delete_many, [(req(pair.a4, command="firewall-drop-long"), {})])
        assert agent(fw.active) == set()
        assert pair.reachable(pair.b4)
    finally:
        agent(fw.teardown)
