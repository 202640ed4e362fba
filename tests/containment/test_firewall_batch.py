"""The executor hands a chunk of new firewall-drop blocks to FirewallDrop.add_many: one nftables
transaction for a flood of attackers, while every order still gets its own log lines, audit
record and applied mark; and when the batch call fails as a whole, the adds are retried one by
one. Real nftables in the agent namespace; the executor's threads are started from a thread
inside it, so they act on its kernel state."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from dfir_ar.arlog import read_audit
from dfir_ar.config.models import Config
from dfir_ar.executor import Executor, Ticket
from dfir_ar.ids import new_id
from dfir_ar.ledger import APPLIED, Ledger
from dfir_ar.order import Order
from dfir_ar.responder import BatchResult, Request, Target
from dfir_ar.validate import parse_ip
from responders.firewall_drop import FirewallDrop
from tests.conftest import require_tool
from tests.containment.conftest import InNetns, protected
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


@pytest.fixture
def executor(pair: NetPair, agent: InNetns, tmp_path: Path) -> Iterator[Executor]:
    require_tool("nft")
    cfg = _config(tmp_path)
    ledger = Ledger.open(cfg.global_.state_dir)
    ex = agent(Executor, cfg, ledger, protected=protected(pair))
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
    assert pair.ping_ok(pair.b4)
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
