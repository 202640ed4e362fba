"""Helpers for end-to-end tests: a real `dfir-ar serve` subprocess on a config in tmp_path."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfir_ar.arlog import read_audit
from dfir_ar.control import ServeNotRunning, request
from dfir_ar.errors import TransportError

# The installed console script, as a user runs it (the venv's, next to this interpreter).
_SCRIPT = Path(sys.executable).parent / "dfir-ar"
DFIR_AR = [str(_SCRIPT)] if _SCRIPT.exists() else [
    sys.executable, "-c", "import sys; from dfir_ar.cli.main import main; sys.exit(main())"
]


def wazuh_alert(
    srcip: str, *, rule: int = 5712, n: int = 0, level: int = 10, agent: str = "000"
) -> str:
    """One alerts.json line as Wazuh writes it (sshd brute force)."""
    return json.dumps(
        {
            "timestamp": "2026-11-22T08:00:10.000+0000",
            "rule": {"level": level, "description": "sshd: brute force trying to get access",
                     "id": str(rule), "firedtimes": n + 1, "mail": False,
                     "groups": ["syslog", "sshd", "authentication_failures"]},
            "agent": {"id": agent, "name": "e2e-host" if agent == "000" else f"agent-{agent}"},
            "manager": {"name": "e2e-host"},
            "id": f"1795334410.{4000 + n}",
            "full_log": f"Nov 22 08:00:10 e2e sshd[77]: Failed password for root from {srcip}",
            "decoder": {"parent": "sshd", "name": "sshd"},
            "data": {"srcip": srcip, "dstuser": "root"},
            "location": "/var/log/auth.log",
        },
        separators=(",", ":"),
    )


@dataclass
class Setup:
    root: Path
    config: Path
    alerts: Path
    hosts_deny: Path
    socket: Path
    log_dir: Path
    state_dir: Path

    def append(self, *lines: str) -> None:
        with self.alerts.open("a") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()

    def deny_lines(self) -> list[str]:
        try:
            return self.hosts_deny.read_text().splitlines()
        except FileNotFoundError:
            return []

    def audit(self) -> list[dict[str, Any]]:
        return read_audit(self.log_dir / "audit.jsonl")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*DFIR_AR, *args], capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, "DFIR_AR_CONFIG": str(self.config)},
        )


def make_setup(tmp_path: Path, *, timeout: float = 3, extra: str = "") -> Setup:
    # AF_UNIX paths are limited to 108 bytes; tmp_path can be longer than that.
    sock = Path("/tmp") / f"ex-{uuid.uuid4().hex[:10]}.sock"
    setup = Setup(
        root=tmp_path,
        config=tmp_path / "dfir-ar.toml",
        alerts=tmp_path / "alerts.json",
        hosts_deny=tmp_path / "hosts.deny",
        socket=sock,
        log_dir=tmp_path / "log",
        state_dir=tmp_path / "state",
    )
    setup.config.write_text(
        f"""
[global]
state_dir = "{setup.state_dir}"
log_dir = "{setup.log_dir}"
active_response_dir = "{tmp_path / 'ar-bin'}"
control_socket = "{sock}"
white_list = ["198.51.100.0/24"]

[[command]]
name = "host-deny"
executable = "host-deny"
expect = ["srcip"]
timeout_allowed = true

[[active_response]]
command = "host-deny"
location = "local"
rules_id = [5712]
timeout = {timeout}

[responders.host-deny]
path = "{setup.hosts_deny}"

[evidence]
store = "file://{tmp_path / 'evidence'}"
{extra}
"""
    )
    # The alerts file does not exist yet: a file that appears after serve started is read from
    # offset 0 (one that is already there on the very first start is followed from its end).
    return setup


class Serve:
    """A `dfir-ar serve` child process; always stopped (and killed if need be) on exit."""

    def __init__(self, setup: Setup, *, follow_alerts: bool = True) -> None:
        self.setup = setup
        # On the very first start the tail must be waiting for the file before a test writes it.
        self._await_tail = follow_alerts and not (setup.state_dir / "ledger.sqlite3").exists()
        args = [*DFIR_AR, "serve", "-c", str(setup.config)]
        if follow_alerts:
            args += ["--alerts", str(setup.alerts)]
        self.stderr_path = setup.root / f"serve-{uuid.uuid4().hex[:6]}.log"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(ServeNotRunning, TransportError):
                if request(self.setup.socket, {"op": "ping"}, timeout=2).get("ok") and (
                    not self._await_tail or "to appear" in self.log()
                    or "following" in self.log()  # the file was there already
                ):
                    return
            time.sleep(0.05)
        raise AssertionError(f"serve not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._stderr.close()
        with contextlib.suppress(FileNotFoundError):
            self.setup.socket.unlink()


@contextlib.contextmanager
def serving(setup: Setup, **kw: Any) -> Iterator[Serve]:
    serve = Serve(setup, **kw)
    try:
        serve.wait_ready()
        yield serve
    finally:
        serve.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` (a real process changes real files); return when it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
