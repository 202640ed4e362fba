"""`dfir-ar simulate` run in-process on a real config file and the example alerts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dfir_ar.cli.main import cli
from dfir_ar.cli.simulate import alert_time, nth

from .conftest import EXAMPLES

CONFIG = """
[global]
state_dir = "{d}/state"
log_dir = "{d}/log"
active_response_dir = "{d}/ar"
white_list = ["198.51.100.10"]
agent_id = "{agent}"  # the host the sample alerts come from (location local runs only there)
agent_name = "web01"  # its name (OSSEC alerts.log names the agent, not its id)

[[command]]
name = "block"
executable = "block"
expect = ["srcip"]
timeout_allowed = true
max_per_minute = {rate}

[[command]]
name = "deny-user"
executable = "deny-user"
expect = ["username"]

[[active_response]]
command = "block"
rules_id = [5712]
timeout = 600
repeated_offenders = [30, 60]

[[active_response]]
command = "deny-user"
location = "server"
rules_group = "invalid_login"
level = 5
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, rate=100)


def write_config(tmp_path: Path, rate: int, agent: str = "001") -> Path:
    ar = tmp_path / "ar"
    ar.mkdir(exist_ok=True)
    for name in ("block", "deny-user"):
        (ar / name).write_text("#!/bin/sh\nexit 0\n")
        (ar / name).chmod(0o755)
    path = tmp_path / "sim.toml"
    path.write_text(CONFIG.format(d=tmp_path, rate=rate, agent=agent))
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["simulate", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_ssh_brute_force_table(config: Path) -> None:
    code, out, err = run("-c", str(config), str(EXAMPLES / "wazuh-ssh-bruteforce.json"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "alert", "rule", "level", "srcip", "binding", "command", "where", "verdict"]
    assert sum("no match" in ln for ln in lines) == 2  # the two 5716s
    fires = [ln for ln in lines if " block " in ln]
    assert len(fires) == 2
    assert fires[0].endswith("fires: timeout 600s") and "local (agent 001)" in fires[0]
    assert fires[1].endswith("fires: 2nd offence, timeout 1800s")  # 15 min later: escalated
    deny = [ln for ln in lines if "deny-user" in ln]
    assert len(deny) == 7 and all(" 5710 " in ln and "server (000)" in ln and "fires" in ln
                                  for ln in deny)
    assert "11 record(s)" in err


def test_json_output_and_verdicts(config: Path) -> None:
    code, out, _ = run("-c", str(config), "--json", str(EXAMPLES / "plain.jsonl"),
                       str(EXAMPLES / "hostile.jsonl"))
    assert code == 0
    data = json.loads(out)
    rows = data["results"]
    by_record: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_record.setdefault(int(r["record"]), []).append(r)
    assert by_record[2][0]["verdict"] == "fires"  # ::ffff:198.51.100.7
    assert by_record[4][0]["verdict"] == "refused" and "white-listed" in by_record[4][0]["reason"]
    assert by_record[5][0]["verdict"] == "no match"
    assert by_record[5][0]["reason"] == (
        "#1 block: rule 5501 not in rules_id; "
        "#2 deny-user: level 3 < 5, groups 'pam,syslog,authentication_success,' do not match "
        "'invalid_login'"
    )
    hostile = [r for r in rows if int(r["record"]) > 5]
    assert hostile and all(r["verdict"] != "fires" for r in hostile)
    assert data["summary"]["records"] == 5 + 266
    assert data["summary"]["unparsable"] >= 80


def test_rate_limit_is_replayed_on_alert_time(tmp_path: Path) -> None:
    config = write_config(tmp_path, rate=1, agent="000")  # plain JSON alerts carry no agent
    lines = [json.dumps({"rule_id": 5712, "level": 10, "srcip": f"198.51.100.{n}",
                         "timestamp": f"2026-11-22T08:00:{n:02d}.000+0000"}) for n in (20, 21, 22)]
    lines.append(json.dumps({"rule_id": 5712, "level": 10, "srcip": "198.51.100.23",
                             "timestamp": "2026-11-22T08:01:30.000+0000"}))
    alerts = tmp_path / "a.jsonl"
    alerts.write_text("\n".join(lines) + "\n")
    code, out, _ = run("-c", str(config), "--json", str(alerts))
    assert code == 0
    verdicts = [(r["verdict"], r["reason"]) for r in json.loads(out)["results"]]
    assert [v for v, _ in verdicts] == ["fires", "refused", "refused", "fires"]
    assert "rate limit: 1/min for block" in verdicts[1][1]


def test_ossec_log_stdin_and_errors(config: Path) -> None:
    data = (EXAMPLES / "ossec-ssh-bruteforce.log").read_bytes()
    result = CliRunner().invoke(cli, ["simulate", "-c", str(config), "-"], input=data)
    assert result.exit_code == 0 and "fires: 2nd offence, timeout 1800s" in result.stdout
    assert "local (agent web01, by name)" in result.stdout  # alerts.log names, not ids
    code, _, err = run("-c", str(config), "/nonexistent/alerts.json")
    assert code == 2 and "No such file" in err
    result = CliRunner().invoke(cli, ["simulate", "--help"])
    assert "Verdicts:" in result.stdout and "white list" in result.stdout


def test_helpers() -> None:
    assert [nth(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd"]
    from dfir_ar.alert import Alert

    assert alert_time(Alert(1, 1, timestamp="2026-11-22T08:00:10.000+0000"), 0) == 1795334410.0
    assert alert_time(Alert(1, 1, timestamp="garbage"), 42.0) == 42.0


def test_alert_from_another_agent_is_not_run_here(tmp_path: Path) -> None:
    """serve and simulate agree: location local means the alert's agent, not this host."""
    path = write_config(tmp_path, rate=100, agent="000")
    code, out, _ = run("-c", str(path), str(EXAMPLES / "wazuh-ssh-bruteforce.json"))
    assert code == 0
    block = [ln for ln in out.splitlines() if " block " in ln]
    assert len(block) == 2
    assert all("not here" in ln and 'global.agent_id = "001"' in ln for ln in block)

