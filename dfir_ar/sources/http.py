"""Alerts POSTed over HTTP: ``POST /alerts`` with ``Authorization: Bearer <token>``.

The body is one JSON alert (Wazuh alerts.json shape or plain JSON, pretty-printed or not), JSON
lines (one alert a line), or with ``format = "ossec"`` alerts.log blocks. Answers:

- 202 ``{"accepted": n, "refused": [...]}``: at least one alert was handed to the engine (and,
  since the handler records it before returning, is durable when the client sees the 202);
  records that did not parse are listed with their reason and never retried usefully.
- 400 ``{"error": ..., "refused": [...]}``: nothing in the body was an alert.
- 401 without the right bearer token (compared in constant time, checked before the body is read).
- 404 other paths, 405 other methods, 411 without Content-Length, 413 over the body cap,
  503 past ``max_connections`` open connections.

Loopback by default; there is no TLS here, so a non-loopback ``listen`` belongs behind a TLS
proxy (a warning says so). Sockets time out after ``request_timeout`` so a slow client cannot
hold a worker thread.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
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
        try:
            text = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"token_file = {str(token_file)!r}: cannot read it ({exc})") from None
        token = text.splitlines()[0].strip() if text else ""
    if not token or len(token) < MIN_TOKEN:
        raise ConfigError(
            f"the HTTP source's bearer token must be at least {MIN_TOKEN} characters "
            "(e.g. `openssl rand -hex 32`)"
        )
    return token


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    source: HttpSource
    handle_alert: Handler
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        # One thread per connection, but a bounded number: past the cap a client gets an
        # immediate 503 instead of a thread (idle or unauthenticated floods cannot pile up).
        if not self.slots.acquire(blocking=False):
            self.source.count("busy")
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

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
        # StreamRequestHandler applies this as the socket timeout: a slow client is dropped.
        self.timeout = self.server.source.request_timeout  # type: ignore[misc]
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: %s", self.client_address[0], format % args)

    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status >= 400 and status not in (400, 401, 404, 405):
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
        max_connections: int = 64,
    ) -> None:
        self.name = name
        self.host, self.port = parse_listen(listen)
        self.token_bytes = read_token(token, None).encode("utf-8")
        self.fmt = fmt
        self.max_alert_bytes = max_alert_bytes
        self.max_body_bytes = max_body_bytes or max_alert_bytes * 64
        self.request_timeout = request_timeout
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
