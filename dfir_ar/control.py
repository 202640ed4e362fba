"""The local control socket: how `dfir-ar run` and `dfir-ar blocks release` reach a running serve.

A unix stream socket at ``global.socket_path``, mode 0600, in a state directory that is 0700.
Every connection's peer credentials are read from the kernel (SO_PEERCRED) and only root (or the
uid serve itself runs as, which is root in production) is served: the file mode alone is not
trusted, because a socket passed to another process or a loosened directory would bypass it.

Wire format: one JSON object per line each way. Requests:
``{"op": "ping"}``, ``{"op": "run", "command", "srcip", "user", "timeout", "wait", "operator"}``,
``{"op": "release", "key", "command"}``. Responses carry ``"ok": true|false`` and ``"error"``.
Every value is validated again on the server side (dfir_ar.validate): the client is a separate
process and the socket the boundary.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfir_ar.config.models import Config
from dfir_ar.errors import DfirArError, TransportError, UsageError
from dfir_ar.ids import new_id
from dfir_ar.order import Order
from dfir_ar.responder import Target
from dfir_ar.validate import parse_ip, parse_username

log = logging.getLogger("dfir_ar.control")

MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 10.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Dispatch = Callable[[dict[str, Any], str], dict[str, Any]]
"""(request, operator) -> response; runs in the connection's thread."""


class ServeNotRunning(TransportError):
    """No serve listens on the control socket (the caller may fall back to in-process)."""


def peer_uid(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, as the kernel reports it."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, _gid = _PEERCRED.unpack(raw)
    return pid, uid


def manual_order(
    config: Config,
    command: str,
    *,
    srcip: str | None,
    user: str | None,
    timeout: float | None,
    operator: str,
) -> Order:
    """Validate an operator's `dfir-ar run` arguments into an Order (UsageError on bad values).

    Without --timeout the command's first [[active_response]] binding gives the timeout and the
    repeated_offenders table, so a manual block behaves like an alert-driven one.
    """
    cmd = config.command_named(command)
    if cmd is None:
        from dfir_ar.config.load import suggest

        names = [c.name for c in config.command]
        raise UsageError(
            f"no [[command]] named {command!r} in the config{suggest(command, names)} "
            f"(configured: {', '.join(names) or 'none'})"
        )
    try:
        ip = None if srcip is None else parse_ip(srcip)
        username = None if user is None else parse_username(user)
    except DfirArError as exc:
        raise UsageError(str(exc)) from None
    if cmd.expects_srcip and ip is None:
        raise UsageError(f"command {command!r} expects srcip: pass --srcip IP")
    if cmd.expects_username and username is None:
        raise UsageError(f"command {command!r} expects a user: pass --user NAME")
    binding = next((ar for ar in config.active_response if ar.command == command), None)
    repeated: tuple[float, ...] = tuple(binding.repeated_offenders) if binding else ()
    if timeout is None and binding is not None and cmd.timeout_allowed:
        timeout = binding.timeout or None
    if timeout is not None:
        if not (timeout > 0) or timeout > 10 * 365 * 86400:
            raise UsageError(f"--timeout {timeout:g} must be between 1 second and 10 years")
        if not cmd.timeout_allowed:
            raise UsageError(
                f"command {command!r} has timeout_allowed = false; drop --timeout or set "
                "timeout_allowed = true on the command"
            )
    return Order(
        id=new_id(),
        command=command,
        target=Target(srcip=ip, username=username),
        timeout=timeout,
        repeated_offenders=repeated,
        extra_args=tuple(cmd.extra_args),
        operator=operator,
    )


def _float_or_none(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{what} must be a number")
    return float(value)


def _str_or_none(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise UsageError(f"{what} must be a short string")
    return value


def order_from_request(config: Config, req: dict[str, Any], operator: str) -> Order:
    command = _str_or_none(req.get("command"), "command")
    if command is None:
        raise UsageError("run needs a command")
    return manual_order(
        config,
        command,
        srcip=_str_or_none(req.get("srcip"), "srcip"),
        user=_str_or_none(req.get("user"), "user"),
        timeout=_float_or_none(req.get("timeout"), "timeout"),
        operator=operator,
    )


class ControlServer:
    """Accepts connections on the socket; one short-lived thread per connection."""

    def __init__(self, path: Path, dispatch: Dispatch) -> None:
        self.path = path
        self._dispatch = dispatch
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._allowed = {0, os.geteuid()}

    def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise TransportError(
                    f"{self.path}: another dfir-ar serve is already running with this state_dir"
                )
            self.path.unlink()  # stale: left by a crashed serve
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # created 0600: no window where the socket is group/world usable
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise TransportError(f"{self.path}: cannot bind the control socket: {exc}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="dfir-ar-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            threading.Thread(
                target=self._handle, args=(conn,), name="dfir-ar-control-conn", daemon=True
            ).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                pid, uid = peer_uid(conn)
            except OSError as exc:
                log.warning("control: cannot read peer credentials: %s", exc)
                return
            if uid not in self._allowed:
                log.warning("control: refused connection from uid %d (pid %d): root only", uid, pid)
                with contextlib.suppress(OSError):
                    # Let the client finish sending (unread, never parsed) so it gets this
                    # answer rather than a broken pipe.
                    conn.settimeout(1.0)
                    _drain_line(conn)
                    _send(conn, {"ok": False,
                                 "error": "permission denied: the control socket is root only"})
                return
            try:
                conn.settimeout(READ_TIMEOUT)
                req = _recv(conn)
                claimed = req.get("operator")
                name = claimed if isinstance(claimed, str) and len(claimed) < 64 else "?"
                try:
                    name = parse_username(name)
                except DfirArError:
                    name = "?"
                operator = f"{name} (uid {uid}, pid {pid})"
                conn.settimeout(None)  # --wait may take as long as the execution's deadline
                response = self._dispatch(req, operator)
            except DfirArError as exc:
                response = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
            except Exception as exc:  # answer the client; the thread must not die silently
                log.exception("control: request failed")
                response = {"ok": False, "error": f"internal error: {exc}"}
            with contextlib.suppress(OSError):
                _send(conn, response)


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    conn.sendall(json.dumps(obj, default=str, separators=(",", ":")).encode() + b"\n")


def _drain_line(conn: socket.socket) -> None:
    """Read and discard up to one request line (bounded)."""
    seen = 0
    while seen <= MAX_REQUEST:
        chunk = conn.recv(65536)
        if not chunk or b"\n" in chunk:
            return
        seen += len(chunk)


def _recv(conn: socket.socket) -> dict[str, Any]:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise TransportError(f"control message larger than {MAX_REQUEST} bytes")
    line = bytes(buf).split(b"\n", 1)[0]
    if not line:
        raise TransportError("empty control message (the other side closed the connection)")
    try:
        obj = json.loads(line)
    except ValueError:
        raise TransportError("control message is not JSON") from None
    if not isinstance(obj, dict):
        raise TransportError("control message is not a JSON object")
    return obj


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def request(path: Path, message: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    """Send one request to the running serve and return its response.

    Raises ServeNotRunning when nothing listens (no socket, or a stale one), PermissionError when
    the socket or its directory is closed to this user, TransportError on any other failure.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ServeNotRunning(f"no dfir-ar serve is listening on {path}") from None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                raise ServeNotRunning(f"no dfir-ar serve is listening on {path}") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                # Not root: the state directory (0700) or the socket (0600) is closed to us,
                # whether or not a serve listens. The CLI says "run as root" (exit 6).
                raise PermissionError(exc.errno, exc.strerror, str(path)) from None
            raise TransportError(f"{path}: cannot connect: {exc.strerror or exc}") from None
        sock.settimeout(timeout)
        try:
            _send(sock, message)
            return _recv(sock)
        except TimeoutError:
            raise TransportError(f"{path}: no answer from serve within {timeout:g}s") from None
        except OSError as exc:
            raise TransportError(f"{path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
