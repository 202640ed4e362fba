"""Fixtures for external-script tests: a private active-response/bin directory and scripts
written the way OSSEC's (argv) and Wazuh's (one JSON line on stdin) own are."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dfir_ar.alert import Alert
from dfir_ar.config.models import CommandConfig, Protocol
from dfir_ar.responder import Request, ResponderContext, Target
from responders.external import ExternalScript

ATTACKER = "203.0.113.7"
ALERT_ID = "1461258591.68247"
LOCATION = "(web01) 198.51.100.5->/var/log/auth.log"


@pytest.fixture
def ar_dir(tmp_path: Path) -> Path:
    """``<tmp>/ossec/active-response/bin`` like a real install, so cwd/parent rules are visible."""
    path = tmp_path / "ossec" / "active-response" / "bin"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "script-logs"
    path.mkdir()
    return path


ScriptWriter = Callable[[str, str], Path]


@pytest.fixture
def write_script(ar_dir: Path) -> ScriptWriter:
    def write(name: str, body: str) -> Path:
        path = ar_dir / name
        path.write_text(body)
        os.chmod(path, 0o750)
        return path

    return write


def ssh_alert(srcip: str = ATTACKER, user: str | None = "alice") -> Alert:
    data: dict[str, str] = {"srcip": srcip}
    if user:
        data["dstuser"] = user
    raw = {
        "timestamp": "2026-11-22T08:00:00.000+0000",
        "rule": {"level": 10, "id": "5712", "description": "sshd brute force", "groups": ["sshd"]},
        "agent": {"id": "001", "name": "web01", "ip": "198.51.100.5"},
        "id": ALERT_ID,
        "location": LOCATION,
        "full_log": "Failed password for alice from 203.0.113.7",
        "data": data,
    }
    return Alert(
        rule_id=5712,
        level=10,
        groups=("sshd",),
        id=ALERT_ID,
        agent_id="001",
        agent_name="web01",
        srcip=srcip,
        dstuser=user,
        location=LOCATION,
        raw=raw,
    )


def request_for(
    command: str = "custom", *, user: str | None = "alice", extra: tuple[str, ...] = ()
) -> Request:
    return Request(
        command=command,
        target=Target(srcip=ipaddress.ip_address(ATTACKER), username=user),
        order_id="01JTEST",
        timeout=600,
        extra_args=extra,
        alert=ssh_alert(user=user),
    )


def make_responder(
    ar_dir: Path,
    tmp_path: Path,
    executable: str,
    *,
    protocol: str = "wazuh",
    deadline: float | None = None,
    key_active: Callable[[str], bool] = lambda key: False,
) -> ExternalScript:
    command = CommandConfig(
        name="custom",
        executable=executable,
        protocol=Protocol(protocol),
        deadline=deadline,
    )
    return ExternalScript.for_command(
        command, ar_dir, ResponderContext(state_dir=tmp_path / "state"), key_active, node="node01"
    )
