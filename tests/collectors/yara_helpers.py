"""What every yara test checks after itself: no YARA-X worker process is left (running or not
reaped). Import the fixture into a test module to make it apply there."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest


def worker_processes() -> list[psutil.Process]:
    """This process's YARA-X workers, zombies included."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("yarax_worker" in part for part in child.cmdline()):
                found.append(child)
        except psutil.ZombieProcess:
            found.append(child)  # exited but not reaped: left behind too
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(autouse=True)
def no_worker_left() -> Iterator[None]:
    yield
    assert worker_processes() == []
