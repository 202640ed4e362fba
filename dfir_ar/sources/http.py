"""Alerts POSTed over HTTP: ``POST /alerts`` with ``Authorization: Bearer <token>``.

The body is one JSON alert (Wazuh alerts.json shape or plain JSON, pretty-printed or not), JSON
lines (one alert a line), or with ``format = "ossec"`` alerts.log blocks. Answers:

- 202 ``{"accepted": n, "refused": [...]}``: at least one alert was handed to the engine (and,
  since the handler records it before returning, is durable when the client sees the 202);
  records that did not parse are listed with their reason and never retried usefully.
- 400 ``{"error": ..., "refused": [...]}``: nothing in the body was an alert.
- 401 without the right bearer token (compared in constant time, checked before the body is read).
- 404 other paths, 405 other methods, 411 without Content-Length, 413 over the body cap,
  414/431 over the 8 KiB request-head cap, 503 when every one of ``max_connections`` slots is
  busy past its head.

Loopback by default; there is no TLS here, so a non-loopback ``listen`` belongs behind a TLS
proxy (a warning says so). A slow client cannot hold the intake (slowloris): the request line
and headers must arrive within ``header_timeout`` in all (``request_timeout`` bounds each recv
only), they are capped at 8 KiB, a client without the token is closed after one answer, and
when every slot is taken the connection that has waited longest for its head is closed to make
room, so a client that sends its request at once always gets in.
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import ipaddress
import json
import logging
import os
import socket
import stat
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dfir_ar.alert import Alert
from dfir_ar.errors import ConfigError, TransportError
from dfir_ar.parsers import (
    DEFAULT_MAX_ALERT_BYTES,
    MalformedAlert,
    excerpt,
    parse_json_alert,
    parse_ossec_text,
    parse_plain_json,
    parse_wazuh_line,
)
from dfir_ar.sources.base import Handler, Rejected

log = logging.getLogger(__name__)

PATH = "/alerts"
MIN_TOKEN = 16
MAX_HEAD_BYTES = 8 * 1024
"""Request line plus headers, all read before the token is checked."""
EVICT_WAIT = 1.0
"""How long a new connection waits for the slot of the connection evicted for it."""
_BUSY_BODY = b'{"error": "too many connections; retry"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def parse_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:8787`` or ``[::1]:8787`` -> (host, port); ConfigError otherwise."""
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text, 10)
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"listen = {listen!r}: expected ADDRESS:PORT such as 127.0.0.1:8787 or [::1]:8787"
        ) from None
    if not sep or not 0 <= port <= 65535:
        raise ConfigError(f"listen = {listen!r}: the port must be 0..65535")
    return host, port


def read_token(token: str | None, token_file: Path | None) -> str:
    """The bearer token from the config or from a file (first line, whitespace stripped)."""
    if token_file is not None:
        text = _read_private(token_file).strip()
        token = text.splitlines()[0].strip() if text else ""
    if not token or len(token) < MIN_TOKEN:
        raise ConfigError(
            f"the HTTP source's bearer token must be at least {MIN_TOKEN} characters "
            "(e.g. `openssl rand -hex 32`)"
        )
    return token


def _read_private(path: Path) -> str:
    """A secret file's text; ConfigError unless it is a regular file (not a symlink) owned by
    root (or by the user dfir-ar runs as) that no group or other user can read or write."""
    where = f"token_file = {str(path)!r}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        hint = " (a symlink is refused)" if os.path.islink(path) else ""
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc}){hint}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(f"{where}: owned by uid {st.st_uid}, not root; chown root it")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{where}: mode {stat.S_IMODE(st.st_mode):04o} lets others read or change the "
                "token; chmod 0600 it"
            )
        try:
            return fh.read(65536).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read it ({exc})") from None


class _HeadBudget:
    """The connection's reader while headers are parsed: LineTooLong (431) past the byte cap,
    so a client without the token cannot make us hold 100 x 64 KiB of headers."""

    def __init__(self, raw: Any, left: int) -> None:
        self.raw = raw
        self.left = left

    def readline(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise http.client.LineTooLong(f"request head over {MAX_HEAD_BYTES} bytes")
        limit = self.left + 1 if size < 0 else min(size, self.left + 1)
        data: bytes = self.raw.readline(limit)
        self.left -= len(data)
        if self.left < 0:
            raise http.client.LineTooLong(f"request head over {MAX_HEAD_BYTES} bytes")
        return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    """The listen backlog (the stdlib's 5 would let a burst of clients wait on SYN retries)."""
    source: HttpSource
    handle_alert: Handler
    slots: threading.BoundedSemaphore

    def server_activate(self) -> None:
        self.heads: dict[_RequestHandler, float] = {}
        """Connections still reading a request head, with when they started (monotonic)."""
        self.heads_lock = threading.Lock()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        # One thread per connection, but a bounded number. When all are taken, the connection
        # that has waited longest for its head makes room (a slow dripper loses its slot to a
        # client that sends its request at once); only when every slot is past its head does a
        # client get an immediate 503 instead of a thread.
        if not self.slots.acquire(blocking=False) and not (
            self._evict_oldest() and self.slots.acquire(timeout=EVICT_WAIT)
        ):
            self.source.count("busy")
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def head_begin(self, handler: _RequestHandler) -> None:
        with self.heads_lock:
            self.heads[handler] = time.monotonic()

    def head_end(self, handler: _RequestHandler) -> bool:
        """False if the connection was closed meanwhile (deadline or eviction)."""
        with self.heads_lock:
            return self.heads.pop(handler, None) is not None

    def _drop(self, handler: _RequestHandler) -> None:
        # Called with heads_lock held and the handler just removed from heads: its thread is
        # still inside its head read, so the socket is open; shutdown wakes the blocked recv.
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)

    def _evict_oldest(self) -> bool:
        with self.heads_lock:
            if not self.heads:
                return False
            oldest = min(self.heads, key=self.heads.__getitem__)
            del self.heads[oldest]
            self._drop(oldest)
        self.source.count("evicted")
        return True

    def service_actions(self) -> None:
        # serve_forever calls this every poll interval: close heads past their deadline.
        limit = time.monotonic() - self.source.header_timeout
        with self.heads_lock:
            late = [h for h, started in self.heads.items() if started < limit]
            for handler in late:
                del self.heads[handler]
                self._drop(handler)
        if late:
            self.source.count("head_timeout", len(late))

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "dfir-ar"
    sys_version = ""

    def setup(self) -> None:
        # StreamRequestHandler applies this as the socket timeout of each recv; the whole head
        # has its own deadline (header_timeout, enforced by the server's service_actions).
        self.timeout = self.server.source.request_timeout  # type: ignore[misc]
        self.authenticated = False
        """Set once a request on this connection carried the token; until then, one answer."""
        super().setup()

    def handle_one_request(self) -> None:
        """The stdlib's loop step, with the head read under a deadline and a byte cap."""
        self.server.head_begin(self)
        try:
            ready = self._read_head()
        except OSError:  # a recv timeout, or the socket shut down at the deadline / eviction
            ready = False
        finally:
            live = self.server.head_end(self)
        if not (ready and live):
            self.close_connection = True
            return
        method = getattr(self, f"do_{self.command}", None)
        if method is None:
            self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
            return
        method()
        self.wfile.flush()

    def _read_head(self) -> bool:
        raw = self.rfile
        line = raw.readline(MAX_HEAD_BYTES + 1)
        self.raw_requestline = line
        if not line:
            return False
        if len(line) > MAX_HEAD_BYTES:
            self.requestline = self.request_version = self.command = ""
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return False
        self.rfile = _HeadBudget(raw, MAX_HEAD_BYTES - len(line))  # type: ignore[assignment]
        try:
            return self.parse_request()
        finally:
            self.rfile = raw

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: %s", self.client_address[0], format % args)

    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if not self.authenticated or (status >= 400 and status not in (400, 404, 405)):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _not_allowed(self) -> None:
        self._reply(405, {"error": "use POST /alerts"}, {"Allow": "POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def do_POST(self) -> None:
        source = self.server.source
        if self.path.split("?", 1)[0] != PATH:
            self._reply(404, {"error": f"no such endpoint; POST alerts to {PATH}"})
            return
        auth = self.headers.get("Authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), source.token_bytes
        ):
            source.count("unauthorized")
            self.close_connection = True
            self._reply(
                401,
                {"error": "missing or wrong bearer token"},
                {"WWW-Authenticate": 'Bearer realm="dfir-ar"', "Connection": "close"},
            )
            return
        self.authenticated = True
        if self.headers.get("Transfer-Encoding"):
            self._reply(411, {"error": "send a Content-Length (chunked bodies are not accepted)"})
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.strip().isdigit():
            self._reply(411, {"error": "Content-Length is required"})
            return
        length = int(length_text)
        if length > source.max_body_bytes:
            source.count("too_large")
            self._reply(413, {"error": f"body is {length} bytes; the limit is {source.max_body_bytes}"})
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return
        items = source.parse_body(body)
        refused = [
            {"record": n, "reason": item.reason}
            for n, item in enumerate(items, 1)
            if isinstance(item, Rejected)
        ]
        accepted = len(items) - len(refused)
        try:
            with source.lock:
                for item in items:
                    self.server.handle_alert(item, None)
        except Exception:
            log.exception("%s: the engine failed to record a POSTed alert", source.name)
            self._reply(500, {"error": "the engine could not record the alerts; retry later"})
            return
        source.count("accepted", accepted)
        source.count("refused", len(refused))
        if accepted:
            self._reply(202, {"accepted": accepted, "refused": refused})
        elif not items:
            self._reply(400, {"error": "empty body: send one JSON alert or JSON lines"})
        else:
            self._reply(400, {"error": refused[0]["reason"], "refused": refused})


class HttpSource:
    """An AlertSource serving ``POST /alerts`` until ``stop`` is set."""

    def __init__(
        self,
        name: str,
        listen: str,
        token: str,
        *,
        fmt: str = "auto",
        max_alert_bytes: int = DEFAULT_MAX_ALERT_BYTES,
        max_body_bytes: int | None = None,
        request_timeout: float = 10.0,
        header_timeout: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        self.name = name
        self.host, self.port = parse_listen(listen)
        self.token_bytes = read_token(token, None).encode("utf-8")
        self.fmt = fmt
        self.max_alert_bytes = max_alert_bytes
        self.max_body_bytes = max_body_bytes or max_alert_bytes * 64
        self.request_timeout = request_timeout
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.lock = threading.Lock()
        """Held while calling the handler: the engine sees one alert at a time from this source."""
        self.ready = threading.Event()
        self.address: tuple[str, int] | None = None
        self.counters: dict[str, int] = {}
        if not ipaddress.ip_address(self.host).is_loopback:
            log.warning(
                "%s: listening on %s, not loopback: alerts and the token travel in clear text; "
                "put a TLS proxy in front",
                name, self.host,
            )

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counters[what] = self.counters.get(what, 0) + n

    def parse_body(self, body: bytes) -> list[Alert | Rejected]:
        if self.fmt == "ossec":
            return [
                p.item if isinstance(p.item, Alert) else Rejected(str(p.item), excerpt(p.raw))
                for p in parse_ossec_text(body, self.max_alert_bytes)
            ]
        parse = {"wazuh": parse_wazuh_line, "json": parse_plain_json}.get(self.fmt, parse_json_alert)
        stripped = body.strip()
        if not stripped:
            return []
        if b"\n" in stripped and len(stripped) <= self.max_alert_bytes:
            # One pretty-printed alert, or JSON lines? Try the whole body as one alert first.
            try:
                return [parse(stripped, self.max_alert_bytes)]
            except MalformedAlert:
                pass
        out: list[Alert | Rejected] = []
        for line in stripped.split(b"\n"):
            if not line.strip():
                continue
            try:
                out.append(parse(line, self.max_alert_bytes))
            except MalformedAlert as exc:
                out.append(Rejected(str(exc), excerpt(line)))
        return out

    def run(self, handle: Handler, stop: threading.Event) -> None:
        server_cls = _Server6 if ":" in self.host else _Server
        try:
            server = server_cls((self.host, self.port), _RequestHandler)
        except OSError as exc:
            raise TransportError(
                f"{self.name}: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; "
                "change listen in the [[source]] block"
            ) from None
        server.source = self
        server.slots = threading.BoundedSemaphore(self.max_connections)
        server.handle_alert = handle
        bound = server.server_address
        self.address = (str(bound[0]), int(bound[1]))
        log.info("%s: accepting POST %s on %s:%d", self.name, PATH, self.address[0], self.address[1])
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=self.name, daemon=True
        )
        thread.start()
        self.ready.set()
        try:
            stop.wait()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
