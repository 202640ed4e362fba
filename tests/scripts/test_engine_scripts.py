"""Seam D through the real engine: an Executor whose commands are OSSEC- and Wazuh-protocol
scripts in active_response_dir. The add runs the script, the timeout runs the delete with the
same arguments/message, a repeat offence refreshes without running the script again, and a
traversal name never runs anything."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfir_ar.clock import FakeClock
from dfir_ar.config.models import Config
from dfir_ar.executor import Executor
from dfir_ar.ids import new_id
from dfir_ar.ledger import Ledger
from dfir_ar.order import Order
from dfir_ar.responder import Target
from dfir_ar.validate import parse_ip

WAZUH_SCRIPT = """#!/usr/bin/python3
import json, sys
line = sys.stdin.readline()
msg = json.loads(line)
with open({log!r}, "a") as f:
    f.write(line)
if msg["command"] == "add":
    keys = [msg["parameters"]["alert"]["data"]["srcip"]]
    print(json.dumps({{"version": 1, "origin": {{"name": "w", "module": "active-response"}},
                      "command": "check_keys", "parameters": {{"keys": keys}}}}), flush=True)
    answer = json.loads(sys.stdin.readline())
    with open({log!r}, "a") as f:
        f.write(json.dumps(answer) + "\\n")
"""

OSSEC_SCRIPT = """#!/bin/sh
echo "$*" >> {log}
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Executor, FakeClock, Path]]:
    ar_dir = tmp_path / "ar-bin"
    ar_dir.mkdir()
    log = tmp_path / "calls.log"
    for name, body in (("wazuh-drop", WAZUH_SCRIPT), ("ossec-drop.sh", OSSEC_SCRIPT)):
        (ar_dir / name).write_text(body.format(log=str(log)))
        os.chmod(ar_dir / name, 0o750)
    raw: dict[str, Any] = {
        "global": {
            "state_dir": str(tmp_path / "state"),
            "log_dir": str(tmp_path / "log"),
            "active_response_dir": str(ar_dir),
            "execution_deadline": 20,
        },
        "command": [
            {
                "name": "wdrop",
                "executable": "wazuh-drop",
                "protocol": "wazuh",
                "expect": ["srcip"],
                "timeout_allowed": True,
            },
            {
                "name": "odrop",
                "executable": "ossec-drop.sh",
                "protocol": "ossec",
                "expect": ["srcip"],
                "timeout_allowed": True,
            },
        ],
    }
    config = Config.model_validate(raw)
    clock = FakeClock()
    ledger = Ledger.open(config.global_.state_dir)
    executor = Executor(config, ledger, clock=clock, protected=[])
    try:
        yield executor, clock, log
    finally:
        executor.shutdown(lift=False)
        ledger.close()


def order(command: str, ip: str, clock: FakeClock) -> Order:
    return Order(
        id=new_id(clock.now()),
        command=command,
        target=Target(srcip=parse_ip(ip)),
        timeout=60.0,
        repeated_offenders=(5,),
    )


def test_wazuh_script_add_refresh_and_delete_on_timeout(
    setup: tuple[Executor, FakeClock, Path],
) -> None:
    executor, clock, log = setup
    first = executor.submit(order("wdrop", "203.0.113.20", clock)).result()
    assert first.outcome == "ok", first
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert [c["command"] for c in calls] == ["add", "continue"]
    assert calls[0]["parameters"]["alert"]["data"]["srcip"] == "203.0.113.20"

    clock.advance(10)
    again = executor.submit(order("wdrop", "203.0.113.20", clock)).result()
    assert again.action == "refresh"
    assert len(log.read_text().splitlines()) == 2  # the ledger deduped: the script did not run

    clock.advance(400)
    [done] = [t.result() for t in executor.expire_due()]
    assert (done.action, done.outcome) == ("delete", "ok"), done
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert calls[2] == {**calls[0], "command": "delete"}


def test_ossec_script_delete_repeats_add_arguments(
    setup: tuple[Executor, FakeClock, Path],
) -> None:
    executor, clock, log = setup
    assert executor.submit(order("odrop", "2001:db8::20", clock)).result().outcome == "ok"
    clock.advance(61)
    [done] = [t.result() for t in executor.expire_due()]
    assert done.outcome == "ok", done
    assert log.read_text().splitlines() == [
        "add - 2001:db8::20 - - - -",
        "delete - 2001:db8::20 - - - -",
    ]
