"""The one subprocess runner: argv only, new session, the whole group killed at the deadline."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from dfir_ar.errors import DeadlineExceeded, ExecutionError
from dfir_ar.procs import run


def test_argv_is_not_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    done = run(["echo", f"; touch {marker}"], timeout=5)
    assert done.returncode == 0
    assert not marker.exists()
    assert done.stdout == f"; touch {marker}\n".encode()


def test_string_argv_refused() -> None:
    with pytest.raises(ExecutionError):
        run("echo hi", timeout=5)


def test_check_raises_with_stderr() -> None:
    with pytest.raises(ExecutionError, match="No such file"):
        run(["ls", "/nonexistent-dfir-ar"], timeout=5, check=True)


def test_missing_program() -> None:
    with pytest.raises(ExecutionError, match="cannot start"):
        run(["/nonexistent/prog"], timeout=5)


def test_deadline_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # A parent that leaves a grandchild behind: both must die at the deadline.
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        run(["sh", "-c", script], timeout=2)  # time for sh to fork and write the pidfile
    assert time.monotonic() - start < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while psutil.pid_exists(child) and time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    alive = psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE
    assert not alive


def test_child_gets_its_own_session() -> None:
    done = run(["python3", "-c", "import os; print(os.getsid(0))"], timeout=10)
    assert int(done.stdout) != os.getsid(0)


def test_stdin_is_not_inherited() -> None:
    done = run(["cat"], timeout=5)
    assert done.returncode == 0 and done.stdout == b""
