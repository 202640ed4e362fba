"""Fixtures for the execution side: a config in tmp_path, a ledger, an executor on a FakeClock."""

from __future__ import annotations

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
from dfir_ar.validate import parse_ip, parse_network


def engine_config(tmp_path: Path, **global_: Any) -> Config:
    raw: dict[str, Any] = {
        "global": {
            "state_dir": str(tmp_path / "state"),
            "log_dir": str(tmp_path / "log"),
            "active_response_dir": str(tmp_path / "ar-bin"),
            "white_list": ["198.51.100.0/28"],
            **global_,
        },
        "command": [
            {"name": "host-deny", "executable": "host-deny", "expect": ["srcip"],
             "timeout_allowed": True},
            {"name": "limited-deny", "executable": "host-deny", "expect": ["srcip"],
             "timeout_allowed": True, "max_per_minute": 2},
        ],
        "active_response": [
            {"command": "host-deny", "rules_id": [5712], "timeout": 60,
             "repeated_offenders": [5, 10]},
        ],
        "responders": {"host-deny": {"path": str(tmp_path / "hosts.deny")}},
    }
    return Config.model_validate(raw)


def order(ip: str, *, command: str = "host-deny", timeout: float | None = 60.0,
          repeated: tuple[float, ...] = (5, 10), clock: FakeClock | None = None) -> Order:
    return Order(
        id=new_id(clock.now() if clock else None),
        command=command,
        target=Target(srcip=parse_ip(ip)),
        timeout=timeout,
        repeated_offenders=repeated,
    )


class Engine:
    def __init__(self, tmp_path: Path, config: Config, clock: FakeClock) -> None:
        self.tmp_path = tmp_path
        self.config = config
        self.clock = clock
        self.ledger = Ledger.open(config.global_.state_dir)
        self.executor = Executor(
            config, self.ledger, clock=clock,
            protected=[parse_network(n) for n in config.global_.white_list],
        )

    @property
    def hosts_deny(self) -> Path:
        return self.tmp_path / "hosts.deny"

    def deny_lines(self) -> list[str]:
        return self.hosts_deny.read_text().splitlines() if self.hosts_deny.exists() else []

    def restart(self) -> None:
        """A new executor on the same ledger (what a serve restart does)."""
        self.close()
        self.ledger = Ledger.open(self.config.global_.state_dir)
        self.executor = Executor(
            self.config, self.ledger, clock=self.clock,
            protected=[parse_network(n) for n in self.config.global_.white_list],
        )

    def close(self) -> None:
        self.executor.shutdown(lift=False)
        self.ledger.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(tmp_path: Path, clock: FakeClock) -> Iterator[Engine]:
    eng = Engine(tmp_path, engine_config(tmp_path), clock)
    try:
        yield eng
    finally:
        eng.close()
