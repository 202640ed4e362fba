"""The one place that starts subprocesses: argv lists only, never a shell; each child in its own
session so a deadline kills the whole process group (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dfir_ar.errors import DeadlineExceeded, ExecutionError

KILL_GRACE = 2.0

# The executor's per-execution deadline (monotonic seconds). A plug-in passes its own timeout to
# run(); inside an execution that timeout is clamped so no child outlives the execution's deadline.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dfir_ar_deadline", default=None
)


class deadline_scope:
    """Within this block, every run() ends (its group killed) by monotonic time ``at``.

    A class, not @contextlib.contextmanager: it wraps every execution, once per alert, and a
    generator-based manager costs several times more to enter and leave."""

    __slots__ = ("_at", "_token")

    def __init__(self, at: float) -> None:
        self._at = at

    def __enter__(self) -> None:
        self._token = _DEADLINE.set(self._at)

    def __exit__(self, *exc: object) -> None:
        _DEADLINE.reset(self._token)


def remaining(default: float) -> float:
    """Seconds left before the current execution's deadline (``default`` outside one)."""
    at = _DEADLINE.get()
    if at is None:
        return default
    return max(0.0, min(default, at - time.monotonic()))


@dataclass(frozen=True, slots=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    duration: float
    timed_out: bool = False


def _check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str) or not argv:
        raise ExecutionError("argv must be a non-empty list of strings")
    out = tuple(argv)
    for item in out:
        if not isinstance(item, str) or "\x00" in item:
            raise ExecutionError(f"argv element {item!r} is not a NUL-free string")
    return out


def kill_group(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever is left after ``grace`` seconds."""
    if proc.poll() is not None:
        # The leader is gone but children in its group may live on.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session with piped stdout/stderr (callers that converse use this)."""
    args = _check_argv(argv)
    try:
        return subprocess.Popen(
            args,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise ExecutionError(f"cannot start {args[0]}: {exc.strerror or exc}") from exc


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    check: bool = False,
) -> Completed:
    """Run ``argv`` to completion or kill its group at ``timeout`` seconds.

    Raises DeadlineExceeded on timeout, ExecutionError if it cannot start or (with ``check``)
    exits non-zero; the error message carries the command's stderr.
    """
    start = time.monotonic()
    timeout = remaining(timeout)
    proc = spawn(argv, env=env, cwd=cwd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise DeadlineExceeded(
            f"{proc.args[0]!s} ran past its {timeout:g}s deadline; its process group was killed"  # type: ignore[index]
        ) from None
    finally:
        if proc.poll() is None:
            kill_group(proc)
    done = Completed(
        argv=tuple(str(a) for a in proc.args),  # type: ignore[union-attr]
        returncode=proc.returncode,
        stdout=out or b"",
        stderr=err or b"",
        duration=time.monotonic() - start,
    )
    if check and done.returncode != 0:
        msg = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
        raise ExecutionError(f"{' '.join(done.argv)}: {msg}")
    return done
