"""Intake fixtures: configs built in memory, a CursorStore persisted to a JSON file (the engine's
own is the SQLite ledger), and a handler that records what a source delivers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dfir_ar.alert import Alert
from dfir_ar.config.models import Config
from dfir_ar.sources.base import AlertSource, Cursor, Rejected

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "alerts"


def make_config(**overrides: Any) -> Config:
    """Two commands (srcip, username) bound to rule 5712, unless overridden."""
    raw: dict[str, Any] = {
        "global": {"white_list": ["198.51.100.10", "2001:db8:1::/48"]},
        "command": [
            {"name": "block", "executable": "block", "expect": ["srcip"], "timeout_allowed": True},
            {"name": "deny-user", "executable": "deny-user", "expect": ["username"],
             "timeout_allowed": True},
            {"name": "snapshot", "executable": "snapshot", "expect": []},
        ],
        "active_response": [
            {"command": "block", "rules_id": [5712], "timeout": 600,
             "repeated_offenders": [30, 60]},
            {"command": "deny-user", "rules_id": [5712], "location": "server", "timeout": 60},
        ],
    }
    for key, value in overrides.items():
        if key == "global":
            raw["global"].update(value)
        else:
            raw[key] = value
    return Config.model_validate(raw)


class JsonCursorStore:
    """Cursors in a JSON file, written atomically (temp + rename) on every save."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, source: str) -> Cursor | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        pos = data.get(source)
        return Cursor(source, pos) if pos is not None else None

    def save(self, cursor: Cursor) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        data[cursor.source] = cursor.position
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)


class Recorder:
    """A Handler that keeps what it got and persists the cursor, as the ledger would."""

    def __init__(self, store: JsonCursorStore | None = None) -> None:
        self.items: list[Alert | Rejected] = []
        self.cursors: list[Cursor | None] = []
        self.store = store
        self.lock = threading.Lock()
        self.fail_after: int | None = None

    def __call__(self, item: Alert | Rejected, cursor: Cursor | None) -> None:
        with self.lock:
            if self.fail_after is not None and len(self.items) >= self.fail_after:
                raise RuntimeError("simulated crash before the cursor is saved")
            self.items.append(item)
            self.cursors.append(cursor)
            if self.store is not None and cursor is not None:
                self.store.save(cursor)

    @property
    def alerts(self) -> list[Alert]:
        return [i for i in self.items if isinstance(i, Alert)]

    @property
    def rejected(self) -> list[Rejected]:
        return [i for i in self.items if isinstance(i, Rejected)]

    def wait_for(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.items) >= n:
                    return
            time.sleep(0.002)
        raise AssertionError(f"got {len(self.items)} items, wanted {n}: {self.items!r:.500}")


class Running:
    """A source running in a thread; ``stop()`` joins it and re-raises what it raised."""

    def __init__(self, source: AlertSource, handle: Recorder) -> None:
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

        def target() -> None:
            try:
                source.run(handle, self.stop_event)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "source did not stop"


@pytest.fixture
def run_source() -> Iterator[Callable[..., Running]]:
    """Start a source in a thread; by default wait until it says it is ready (file open,
    socket bound), since a tail that starts at the end would rightly skip earlier lines."""
    started: list[Running] = []

    def start(source: AlertSource, handle: Recorder, *, wait: bool = True) -> Running:
        r = Running(source, handle)
        started.append(r)
        ready = getattr(source, "ready", None)
        if wait and ready is not None:
            assert ready.wait(5), f"{source.name} did not become ready"
        return r

    yield start
    for r in started:
        r.stop()


def wazuh_line(rule_id: int = 5712, level: int = 10, srcip: str | None = "198.51.100.6",
               n: int = 0, **data: Any) -> bytes:
    d: dict[str, Any] = dict(data)
    if srcip is not None:
        d["srcip"] = srcip
    alert = {
        "timestamp": "2026-11-22T08:00:10.000+0000",
        "rule": {"level": level, "description": "sshd brute force", "id": str(rule_id),
                 "groups": ["syslog", "sshd", "authentication_failures"]},
        "agent": {"id": "001", "name": "web01"},
        "id": f"1795334410.{n}",
        "full_log": f"line {n}",
        "data": d,
        "location": "/var/log/auth.log",
    }
    return json.dumps(alert).encode() + b"\n"
