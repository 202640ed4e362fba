"""host-deny: add ``ALL: <ip>`` to hosts.deny (TCP wrappers) and remove exactly that line on undo.

Wazuh's host-deny removes by substring and forgets the IPv6 brackets, so undoing ``1.2.3.4`` also
removes ``ALL: 1.2.3.45`` and an IPv6 line is never removed. Here a line is ours only when it is
byte for byte ``ALL: <ip>`` (``ALL: [<ip>]`` for IPv6); everything else in the file is kept byte
for byte. Every change holds an fcntl lock on a sidecar lock file (the real file is replaced by
rename, so locking it would lock the old inode) and writes a temp file in the same directory,
fsyncs it and renames it over the original, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from dfir_ar.errors import ExecutionError, RefusedInput
from dfir_ar.responder import Arg, Request, Responder, State
from dfir_ar.validate import IPAddress, parse_ip

DEFAULT_PATH = Path("/etc/hosts.deny")


class HostDenyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = DEFAULT_PATH
    """The hosts.deny file to edit (tests and containers point it elsewhere)."""


def deny_line(ip: IPAddress) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        return f"ALL: [{ip.compressed}]"
    return f"ALL: {ip}"


def _parse_deny_line(line: str) -> IPAddress | None:
    """The address of an exact ``ALL: <ip>`` line we could have written, else None."""
    if not line.startswith("ALL: "):
        return None
    value = line[5:]
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
        if ":" not in value:
            return None
    try:
        ip = parse_ip(value)
    except RefusedInput:
        return None  # not an address we could have written: not ours
    return ip if deny_line(ip) == line else None


class HostDeny(Responder):
    """Deny every TCP-wrapped service to the attacker's address via hosts.deny; undo removes
    exactly that line."""

    name: ClassVar[str] = "host-deny"
    expects: ClassVar[tuple[Arg, ...]] = (Arg.SRCIP,)
    supports_timeout: ClassVar[bool] = True
    version: ClassVar[str] = "1"
    Options: ClassVar[type[BaseModel]] = HostDenyOptions

    @property
    def path(self) -> Path:
        opts = self.options
        assert isinstance(opts, HostDenyOptions)
        return opts.path

    def key(self, request: Request) -> str:
        return str(self.srcip(request))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        directory = self.path.parent
        lock_path = directory / f".{self.path.name}.dfir-ar.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ExecutionError(f"host-deny: cannot lock {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise ExecutionError(f"host-deny: cannot read {self.path}: {exc.strerror}") from None

    def _replace(self, data: bytes) -> None:
        directory = self.path.parent
        try:
            mode = self.path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise ExecutionError(f"host-deny: cannot write {self.path}: {exc.strerror}") from None

    def add(self, request: Request) -> State:
        line = deny_line(self.srcip(request))
        encoded = line.encode("ascii")
        with self._locked():
            data = self._read()
            if encoded in data.splitlines():
                return {"line": line, "added": False}
            if data and not data.endswith(b"\n"):
                data += b"\n"
            self._replace(data + encoded + b"\n")
        return {"line": line, "added": True}

    def delete(self, request: Request, state: State) -> None:
        line = deny_line(self.srcip(request))
        encoded = line.encode("ascii")
        with self._locked():
            data = self._read()
            if not data:
                return
            lines = data.splitlines(keepends=True)
            kept = [raw for raw in lines if raw.rstrip(b"\r\n") != encoded]
            if len(kept) != len(lines):
                self._replace(b"".join(kept))

    def active(self) -> set[str]:
        out: set[str] = set()
        for raw in self._read().splitlines():
            try:
                text = raw.decode("ascii")
            except UnicodeDecodeError:
                continue
            ip = _parse_deny_line(text)
            if ip is not None:
                out.add(str(ip))
        return out
