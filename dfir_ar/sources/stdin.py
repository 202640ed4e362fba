"""Alerts from standard input (or any pipe): ``tail -F alerts.json | dfir-ar serve ...``.

A pipe cannot be re-read, so there is no cursor (``None``): durability is the writer's. The
source ends at EOF, after a last line without newline has been parsed. ``select`` with a short
timeout keeps ``stop`` responsive while the pipe is quiet.
"""

from __future__ import annotations

import os
import select
import sys
import threading

from dfir_ar.errors import ConfigError
from dfir_ar.parsers import DEFAULT_MAX_ALERT_BYTES
from dfir_ar.sources.base import Handler
from dfir_ar.sources.reader import RecordReader

CHUNK = 1 << 16


def _stdin_fd() -> int:
    try:
        if sys.stdin is None:
            raise ValueError("no stdin")
        return sys.stdin.fileno()
    except (ValueError, OSError, AttributeError):
        raise ConfigError(
            'the [[source]] type = "stdin" needs an open standard input (serve was started '
            "without one, e.g. detached); pipe alerts into it or remove that source"
        ) from None


class StdinSource:
    def __init__(
        self,
        name: str = "stdin",
        *,
        fd: int | None = None,
        fmt: str = "auto",
        max_alert_bytes: int = DEFAULT_MAX_ALERT_BYTES,
        poll_interval: float = 0.05,
    ) -> None:
        self.name = name
        self.fd = fd
        self.fmt = fmt
        self.max_alert_bytes = max_alert_bytes
        self.poll_interval = poll_interval

    def run(self, handle: Handler, stop: threading.Event) -> None:
        fd = self.fd if self.fd is not None else _stdin_fd()
        reader = RecordReader(self.fmt, self.max_alert_bytes)
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], self.poll_interval)
            if not ready:
                continue
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            if not data:
                break
            for item, _end in reader.feed(data):
                handle(item, None)
        else:
            return
        for item, _end in reader.finish():
            handle(item, None)
