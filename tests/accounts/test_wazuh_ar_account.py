"""disable-account through ``dfir-ar wazuh-ar``: the add and the delete are separate processes,
so the previous account state must survive in wazuh-ar's state file; a repeated add (execd
restarted and forgot) must not overwrite the original state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from dfir_ar.cli.wazuh_ar import state_path
from tests.accounts.conftest import TestUser, can_log_in, pam, shadow_line

DFIR_AR = str(Path(sys.executable).parent / "dfir-ar")


def wazuh_message(command: str, user: str) -> dict[str, Any]:
    return {
        "version": 1,
        "origin": {"name": "node01", "module": "wazuh-execd"},
        "command": command,
        "parameters": {
            "extra_args": ["--plugin", "disable-account"],
            "alert": {
                "rule": {"level": 12, "id": "5720", "groups": ["sshd"]},
                "id": "1763798400.99",
                "data": {"srcip": "203.0.113.8", "dstuser": user},
            },
            "program": "active-response/bin/dfir-ar-disable-account",
        },
    }


def run_wazuh_ar(config: Path, msg: dict[str, Any], answer: str | None) -> list[dict[str, Any]]:
    """One execd-style run with a bounded handshake; returns what wazuh-ar wrote on stdout."""
    proc = subprocess.Popen(
        [DFIR_AR, "wazuh-ar", "-c", str(config), "--handshake-timeout", "10"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(msg).encode() + b"\n")
        proc.stdin.flush()
        seen = []
        if answer is not None:
            check = json.loads(proc.stdout.readline())
            seen.append(check)
            proc.stdin.write(json.dumps({**check, "command": answer}).encode() + b"\n")
            proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        return seen + [json.loads(x) for x in out.splitlines() if x.strip()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_disable_account_via_wazuh_ar_survives_between_processes(test_user: TestUser, tmp_path: Path) -> None:
    config = tmp_path / "dfir-ar.toml"
    state_dir = tmp_path / "state"
    config.write_text(f'[global]\nstate_dir = "{state_dir}"\nlog_dir = "{tmp_path}"\n')
    subprocess.run(["usermod", "--expiredate", "30000", test_user.name], check=True)
    before = shadow_line(test_user.name)

    seen = run_wazuh_ar(config, wazuh_message("add", test_user.name), "continue")
    assert seen[0]["command"] == "check_keys"
    assert seen[0]["parameters"]["keys"] == [test_user.name]
    assert not pam(test_user.name, "acct_mgmt")
    saved = json.loads(state_path(state_dir, "disable-account", test_user.name).read_text())
    assert saved["state"]["previous_expire"] == 30000

    # execd restarted, forgot the block and says "continue" again: the original state is kept.
    run_wazuh_ar(config, wazuh_message("add", test_user.name), "continue")
    again = json.loads(state_path(state_dir, "disable-account", test_user.name).read_text())
    assert again["state"] == saved["state"]

    assert run_wazuh_ar(config, wazuh_message("delete", test_user.name), None) == []
    assert shadow_line(test_user.name) == before
    assert can_log_in(test_user)
    assert not state_path(state_dir, "disable-account", test_user.name).exists()
