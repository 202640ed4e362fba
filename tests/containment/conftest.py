"""Fixtures for containment tests: an attacker/agent namespace pair, and a worker thread that has
entered the agent's network namespace, so responders run in-process but act on the agent's
kernel state (libnftables binds to the namespace of the thread that creates its context, and
subprocesses forked from that thread inherit it)."""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dfir_ar.responder import Request, ResponderContext, Target
from dfir_ar.validate import IPNetwork, parse_ip
from tests.conftest import require_root, require_tool
from tests.netns import NetPair, net_pair

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class InNetns:
    """Run callables on one thread living in a network namespace."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=_enter_netns, initargs=(name,))

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result(timeout=120)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture
def pair() -> Iterator[NetPair]:
    require_root()
    require_tool("ip", "ping")
    with net_pair("fw") as p:
        yield p


@pytest.fixture
def agent(pair: NetPair) -> Iterator[InNetns]:
    runner = InNetns(pair.agent)
    try:
        yield runner
    finally:
        runner.close()


def protected(pair: NetPair, *extra: str) -> list[IPNetwork]:
    """What the engine would pass as white list in the agent: loopback, own addresses, extras."""
    nets = ["127.0.0.0/8", "::1/128", f"{pair.b4}/32", f"{pair.b6}/128", *extra]
    return [ipaddress.ip_network(n) for n in nets]


def context(tmp_path: Path, white_list: list[IPNetwork], **options: Any) -> ResponderContext:
    return ResponderContext(
        state_dir=tmp_path, white_list=white_list, options=options,
        log=logging.getLogger("tests.containment"),
    )


def req(addr: str, timeout: float | None = None, command: str = "firewall-drop") -> Request:
    return Request(command=command, target=Target(srcip=parse_ip(addr)), timeout=timeout)


def agent_run(pair: NetPair, *argv: str, check: bool = True) -> str:
    done = subprocess.run(pair.agent_argv(argv), capture_output=True, text=True, timeout=60,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{argv}: {done.stderr}")
    return done.stdout
