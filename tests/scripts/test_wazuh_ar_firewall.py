"""firewall-drop through ``dfir-ar wazuh-ar`` inside a network namespace (the agent), as execd
would run it: the attacker's ping stops after add and passes after the delete, and
``--timeout`` in extra_args gives the kernel set element its own expiry, so a block lapses even
if execd dies and never sends the delete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_root, require_tool
from tests.netns import NetPair, net_pair

DFIR_AR = str(Path(sys.executable).parent / "dfir-ar")


@pytest.fixture
def pair() -> Any:
    require_root()
    require_tool("ip", "nft", "ping")
    with net_pair("acct") as p:
        yield p


def wazuh_ar(pair: NetPair, config: Path, command: str, extra: list[str]) -> list[dict[str, Any]]:
    msg = {
        "version": 1,
        "origin": {"name": "node01", "module": "wazuh-execd"},
        "command": command,
        "parameters": {
            "extra_args": ["--plugin", "firewall-drop", *extra],
            "alert": {"rule": {"id": "5712", "level": 10}, "data": {"srcip": pair.a4}},
            "program": "active-response/bin/dfir-ar-firewall-drop",
        },
    }
    lines = json.dumps(msg) + "\n"
    if command == "add":
        lines += json.dumps({"version": 1, "command": "continue", "parameters": {}}) + "\n"
    done = subprocess.run(
        pair.agent_argv([DFIR_AR, "wazuh-ar", "-c", str(config)]),
        input=lines.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(x) for x in done.stdout.splitlines() if x.strip()]


def test_firewall_drop_via_wazuh_ar_in_namespace(pair: NetPair, tmp_path: Path) -> None:
    config = tmp_path / "dfir-ar.toml"
    config.write_text(
        f'[global]\nstate_dir = "{tmp_path / "state"}"\nlog_dir = "{tmp_path}"\n'
        '[responders.firewall-drop]\nbackend = "nftables"\n'
    )
    assert pair.ping_ok(count=3, wait=2)  # bounded; any reply counts (the host may be busy)
    seen = wazuh_ar(pair, config, "add", ["--timeout", "600"])
    assert seen[0]["command"] == "check_keys" and seen[0]["parameters"]["keys"] == [pair.a4]
    assert not pair.ping_ok()
    listing = json.loads(pair.in_agent("nft", "-j", "list", "set", "inet", "dfir_ar", "block4"))
    elems = next(i["set"]["elem"] for i in listing["nftables"] if "set" in i)
    [elem] = [e["elem"] for e in elems if isinstance(e, dict) and "elem" in e]
    assert elem["val"] == pair.a4
    assert 590 <= elem["timeout"] <= 600  # the kernel will lift it by itself
    assert wazuh_ar(pair, config, "delete", ["--timeout", "600"]) == []
    assert pair.ping_ok(count=3, wait=2)  # bounded; any reply counts (the host may be busy)
