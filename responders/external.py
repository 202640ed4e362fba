"""Run an existing OSSEC or Wazuh active-response script unchanged (seam D).

A ``[[command]]`` whose ``executable`` is not a dfir-ar plug-in names a file in
``active_response_dir``. It is resolved strictly (bare name, real path inside the real
directory, a regular executable file, not world-writable) and spoken to in one of two protocols:

* ``ossec``: ``<script> add|delete <user> <srcip> <alert_id> <rule_id> <location> <filename>``,
  ``-`` for a missing value; the delete repeats the add arguments exactly (kept in the State).
* ``wazuh``: one JSON line on stdin, stdin left open, the ``check_keys`` handshake answered with
  ``continue``/``abort`` from the engine's ledger (``key_active``); the delete is a new process
  given the same message with ``"command":"delete"``.

Better than execd: every run has a deadline after which the script's whole process group is
killed, whether it never answers ``check_keys`` or never exits (Wazuh #29602); scripts run in
parallel; the environment is fixed (PATH only); the alert handed to the script carries the
*validated* srcip/user in ``data.srcip``/``data.dstuser`` (where Wazuh's own scripts read them), so
a script never sees an attacker's unparsed address.

Dedup: ``key()`` is computed from the validated Target before anything runs: the srcip, else the
username, else the filename. Wazuh's stock scripts return exactly that one value as their keys
(firewall-drop, host-deny, route-null: the srcip; disable-account: the user), so the ledger key
and Wazuh's (program, keys) agree. A script returning other keys is asked about
``key_active("-".join(keys))``, Wazuh's own joining.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dfir_ar import procs, wazuh_protocol
from dfir_ar.config.models import CommandConfig, Protocol
from dfir_ar.errors import (
    DeadlineExceeded,
    ExecutionError,
    InvalidArgument,
    Refused,
)
from dfir_ar.responder import Arg, Request, Responder, ResponderContext, State
from dfir_ar.validate import parse_token

DEFAULT_DEADLINE = 60.0
SCRIPT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
MAX_LOCATION = 256
MAX_STDERR = 64 * 1024
MAX_STDOUT_LINES = 200


class ScriptRefused(Refused):
    """The executable does not resolve to a safe script inside active_response_dir."""


class AlreadyActive(Refused):
    """The script's check_keys were already active; the executor refreshes the timer instead."""

    def __init__(self, command: str, keys: Sequence[str]) -> None:
        super().__init__(f"{command}: keys {list(keys)} already active (check_keys -> abort)")
        self.keys = tuple(keys)


def resolve_script(active_response_dir: Path, executable: str) -> Path:
    """The real path of ``executable`` inside ``active_response_dir``, or ScriptRefused.

    Refuses what Wazuh's API once let through (``!../../bin/ls``): any '/', any '..', NUL, names
    that resolve (through symlinks) outside the directory, non-regular files, files without the
    execute bit, and world-writable files (anyone could replace what root runs).
    """
    if not executable or "/" in executable or "\x00" in executable or ".." in executable or executable == ".":
        raise ScriptRefused(
            f"executable {executable!r} must be a bare file name inside active_response_dir (no '/', no '..')"
        )
    try:
        base = active_response_dir.resolve(strict=True)
    except OSError as exc:
        raise ScriptRefused(
            f"active_response_dir {active_response_dir} is not usable: {exc.strerror or exc}; "
            "set [global] active_response_dir"
        ) from None
    candidate = base / executable
    try:
        real = candidate.resolve(strict=True)
    except OSError:
        raise ScriptRefused(f"no script {candidate} (command executable {executable!r})") from None
    if not real.is_relative_to(base):
        raise ScriptRefused(f"{candidate} resolves to {real}, outside active_response_dir {base}; refused")
    st = real.stat()
    if not stat.S_ISREG(st.st_mode):
        raise ScriptRefused(f"{real} is not a regular file")
    if not os.access(real, os.X_OK):
        raise ScriptRefused(f"{real} is not executable; chmod 0750 it")
    if st.st_mode & stat.S_IWOTH:
        raise ScriptRefused(f"{real} is world-writable; chmod o-w it before dfir-ar runs it")
    return real


@dataclass
class ScriptRun:
    """What one execution of a Wazuh-protocol script did."""

    returncode: int
    keys: list[str] = field(default_factory=list)
    aborted: bool = False
    output: list[str] = field(default_factory=list)
    """Non-protocol stdout lines (kept for the log; execd ignores them)."""
    stderr: str = ""


class _StderrDrain(threading.Thread):
    """Drain stderr so a chatty script cannot fill the pipe and stall; keep the first 64 KiB."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.data = bytearray()

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            if len(self.data) < MAX_STDERR:
                self.data += chunk[: MAX_STDERR - len(self.data)]

    def text(self) -> str:
        self.join(timeout=1.0)
        return self.data.decode("utf-8", "replace").strip()


def _write_all(fd: int, data: bytes, deadline: float) -> bool:
    """Write to a non-blocking pipe until done or the deadline; False if the reader is gone."""
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the script did not read its input before the deadline")
        _, ready, _ = select.select([], [fd], [], remaining)
        if not ready:
            continue
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue
        except BrokenPipeError:
            return False
        view = view[written:]
    return True


def converse(
    argv: Sequence[str],
    message: wazuh_protocol.Message,
    *,
    deadline: float,
    key_active: Callable[[str], bool],
    cwd: str,
    env: dict[str, str] | None = None,
) -> ScriptRun:
    """Play execd for one run of a Wazuh-protocol script, killing its group at ``deadline`` s
    (or earlier, at the executor's deadline scope, whichever comes first)."""
    deadline = procs.remaining(deadline)
    end = time.monotonic() + deadline
    proc = procs.spawn(argv, env=env if env is not None else SCRIPT_ENV, cwd=cwd, stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    drain = _StderrDrain(proc.stderr.fileno())
    drain.start()
    stdin_fd = proc.stdin.fileno()
    fcntl.fcntl(stdin_fd, fcntl.F_SETFL, fcntl.fcntl(stdin_fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    run = ScriptRun(returncode=-1)
    phase = "to read its input"
    try:
        if not _write_all(stdin_fd, wazuh_protocol.encode(message), end):
            phase = "to exit"
        reader = wazuh_protocol.FdLineReader(proc.stdout.fileno())
        phase = "to answer or exit"
        while True:
            line = reader.readline(end, "line from the script")
            if line is None:
                break
            reply = _handle_line(line, message, run, key_active)
            if reply is not None:
                phase = "to exit after the check_keys answer"
                # A script that already exited cannot read the answer; that is its business.
                _write_all(stdin_fd, wazuh_protocol.encode(reply), end)
        phase = "to exit"
        # stdin stays open until the script is done, as execd does: closing it early would
        # turn a script's blocking read into EOF and change its behaviour.
        run.returncode = proc.wait(timeout=max(0.0, end - time.monotonic()))
    except (DeadlineExceeded, subprocess.TimeoutExpired):
        procs.kill_group(proc)
        raise DeadlineExceeded(
            f"{argv[0]} did not {phase.removeprefix('to ')} within its {deadline:g}s deadline; "
            "its process group was killed"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        if proc.poll() is None:
            procs.kill_group(proc)
        proc.stdout.close()
        run.stderr = drain.text()
        proc.stderr.close()
    return run


def _handle_line(
    line: bytes,
    sent: wazuh_protocol.Message,
    run: ScriptRun,
    key_active: Callable[[str], bool],
) -> wazuh_protocol.Message | None:
    """Answer a check_keys line; keep anything else as plain output."""
    stripped = line.strip()
    if not stripped.startswith(b"{"):
        if stripped and len(run.output) < MAX_STDOUT_LINES:
            run.output.append(stripped.decode("utf-8", "replace")[:1000])
        return None
    try:
        looks_like = json.loads(stripped)
    except ValueError:
        looks_like = None
    if not isinstance(looks_like, dict) or looks_like.get("command") != "check_keys":
        if len(run.output) < MAX_STDOUT_LINES:
            run.output.append(stripped.decode("utf-8", "replace")[:1000])
        return None
    # A check_keys we cannot answer meaningfully (bad keys) fails the run instead of hanging it.
    msg = wazuh_protocol.parse_message(stripped)
    if msg.command != "check_keys":
        if len(run.output) < MAX_STDOUT_LINES:
            run.output.append(stripped.decode("utf-8", "replace")[:1000])
        return None
    if run.keys:
        raise ExecutionError("the script sent check_keys twice")
    run.keys = list(msg.parameters.keys)
    # Only an add can collide with an active entry; execd answers every delete with continue.
    active = sent.command == "add" and key_active(wazuh_protocol.joined_keys(run.keys))
    run.aborted = active
    return msg.with_command("abort" if active else "continue")


class ExternalScript(Responder):
    """An OSSEC (argv) or Wazuh (JSON on stdin) active-response script from active_response_dir."""

    name: ClassVar[str] = "external"
    expects: ClassVar[tuple[Arg, ...]] = ()
    supports_timeout: ClassVar[bool] = True

    def __init__(
        self,
        context: ResponderContext,
        *,
        command: CommandConfig,
        script: Path,
        key_active: Callable[[str], bool],
        deadline: float = DEFAULT_DEADLINE,
        node: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        super().__init__(context)
        self.command = command
        self.script = script
        self.key_active = key_active
        self.deadline = command.deadline or deadline
        self.node = node or socket.gethostname()
        # Wazuh runs scripts from its home and they find their log from argv[0]; the AR
        # directory's parent keeps relative paths inside the installation.
        self.cwd = str(cwd or script.parent.parent)

    @classmethod
    def for_command(
        cls,
        command: CommandConfig,
        active_response_dir: Path,
        context: ResponderContext,
        key_active: Callable[[str], bool],
        *,
        default_deadline: float = DEFAULT_DEADLINE,
        node: str | None = None,
    ) -> ExternalScript:
        """Resolve ``command.executable`` strictly and build the responder (ScriptRefused if not)."""
        script = resolve_script(active_response_dir, command.executable)
        return cls(
            context,
            command=command,
            script=script,
            key_active=key_active,
            deadline=default_deadline,
            node=node,
            cwd=active_response_dir.resolve().parent,
        )

    @property
    def program(self) -> str:
        """What execd puts in ``parameters.program`` and scripts put in their log lines."""
        return f"active-response/bin/{self.command.executable}"

    def key(self, request: Request) -> str:
        target = request.target
        if target.srcip is not None:
            return str(target.srcip)
        if target.username:
            return target.username
        if target.filename:
            return target.filename
        raise InvalidArgument(
            f"{self.command.name}: the order has no srcip, username or filename to key it by"
        )

    def add(self, request: Request) -> State:
        if self.command.protocol is Protocol.OSSEC:
            args = self.ossec_args(request)
            self._run_ossec("add", args)
            return {"protocol": "ossec", "args": args}
        message = wazuh_protocol.execd_message(
            "add",
            alert=self.alert_for(request),
            extra_args=request.extra_args,
            program=self.program,
            node=self.node,
        )
        run = self._run_wazuh(message)
        if run.aborted:
            raise AlreadyActive(self.command.name, run.keys)
        return {
            "protocol": "wazuh",
            "message": message.model_dump(mode="json"),
            "keys": run.keys,
        }

    def delete(self, request: Request, state: State) -> None:
        if self.command.protocol is Protocol.OSSEC:
            saved = state.get("args")
            args = [str(a) for a in saved] if isinstance(saved, list) else self.ossec_args(request)
            self._run_ossec("delete", args)
            return
        saved_msg = state.get("message")
        if isinstance(saved_msg, dict):
            message = wazuh_protocol.Message.model_validate(saved_msg).with_command("delete")
        else:
            message = wazuh_protocol.execd_message(
                "delete",
                alert=self.alert_for(request),
                extra_args=request.extra_args,
                program=self.program,
                node=self.node,
            )
        self._run_wazuh(message)

    # -- OSSEC argv protocol -------------------------------------------------------------------

    def ossec_args(self, request: Request) -> list[str]:
        """``user srcip alert_id rule_id location filename`` (then Wazuh < 4.2's extra_args)."""
        target = request.target
        alert = request.alert
        alert_id = "-"
        rule_id = "-"
        location = "-"
        if alert is not None:
            if alert.id:
                alert_id = parse_token(alert.id, "alert id")
            rule_id = str(int(alert.rule_id))
            location = ossec_location(alert.location)
        return [
            target.username or "-",
            str(target.srcip) if target.srcip is not None else "-",
            alert_id,
            rule_id,
            location,
            target.filename or "-",
            *request.extra_args,
        ]

    def _run_ossec(self, action: str, args: Sequence[str]) -> None:
        done = procs.run(
            [str(self.script), action, *args],
            timeout=self.deadline,
            env=SCRIPT_ENV,
            cwd=self.cwd,
        )
        if done.returncode != 0:
            raise ExecutionError(
                f"{self.command.name}: {self.script.name} {action} exited with status "
                f"{done.returncode}: {_stderr(done.stderr)}"
            )
        self.context.log.info(
            "%s: %s %s ok (%.2fs)", self.command.name, self.script.name, action, done.duration
        )

    # -- Wazuh JSON protocol -------------------------------------------------------------------

    def alert_for(self, request: Request) -> dict[str, Any]:
        """The alert as execd passes it, with data.srcip/dstuser replaced by validated values."""
        alert: dict[str, Any] = request.alert.to_wazuh() if request.alert is not None else {}
        raw_data = alert.get("data")
        data = dict(raw_data) if isinstance(raw_data, dict) else {}
        target = request.target
        for name in ("srcip", "dstuser", "filename"):
            data.pop(name, None)
        if target.srcip is not None:
            data["srcip"] = str(target.srcip)
        if target.username:
            data["dstuser"] = target.username
        if target.filename:
            data["filename"] = target.filename
        alert["data"] = data
        return alert

    def _run_wazuh(self, message: wazuh_protocol.Message) -> ScriptRun:
        run = converse(
            [str(self.script)],
            message,
            deadline=self.deadline,
            key_active=self.key_active,
            cwd=self.cwd,
        )
        # After "abort" the exit status is the script's own business (Wazuh's exit 0).
        if run.returncode != 0 and not run.aborted:
            raise ExecutionError(
                f"{self.command.name}: {self.script.name} {message.command} exited with status "
                f"{run.returncode}: {run.stderr or 'no stderr'}"
            )
        self.context.log.info(
            "%s: %s %s ok (keys %s%s)",
            self.command.name,
            self.script.name,
            message.command,
            run.keys,
            ", aborted" if run.aborted else "",
        )
        return run


def ossec_location(location: str) -> str:
    """The alert's location as ONE argv element if printable and bounded, else ``-``."""
    if not location or len(location) > MAX_LOCATION or not location.isprintable():
        return "-"
    return location


def _stderr(data: bytes) -> str:
    text = data[:MAX_STDERR].decode("utf-8", "replace").strip()
    return text or "no stderr"
