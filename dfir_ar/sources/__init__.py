"""Alert sources: a followed file, stdin, an HTTP endpoint. See ``base`` for the contract.

    base.py    Cursor, CursorStore, Rejected, Handler, AlertSource (seam A)
    reader.py  byte stream -> records (JSON lines or OSSEC blocks), partial lines held back
    tail.py    FileTail: durable (device, inode, offset) cursor, rotation, truncation
    stdin.py   StdinSource
    http.py    HttpSource: POST /alerts with a bearer token
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dfir_ar.config.models import Config, SourceConfig
from dfir_ar.errors import ConfigError
from dfir_ar.parsers import DEFAULT_MAX_ALERT_BYTES
from dfir_ar.sources.base import AlertSource, Cursor, CursorStore, Handler, Rejected

__all__ = [
    "AlertSource",
    "Cursor",
    "CursorStore",
    "Handler",
    "Rejected",
    "build_sources",
    "file_source_name",
]


def file_source_name(path: Path) -> str:
    """The cursor key of a followed file: stable across restarts and working directories."""
    return f"file:{os.path.abspath(path)}"


def _build_one(index: int, sc: SourceConfig, store: CursorStore) -> AlertSource:
    where = f"[[source]] #{index}"
    if sc.type == "file":
        assert sc.path is not None  # the model requires it
        from dfir_ar.sources.tail import FileTail

        return FileTail(
            file_source_name(sc.path),
            sc.path,
            store,
            fmt=sc.format,
            max_alert_bytes=sc.max_alert_bytes,
            start_at=sc.start_at,
        )
    if sc.type == "stdin":
        from dfir_ar.sources.stdin import StdinSource

        return StdinSource("stdin", fmt=sc.format, max_alert_bytes=sc.max_alert_bytes)
    from dfir_ar.sources.http import HttpSource, read_token

    try:
        token = read_token(sc.token, sc.token_file)
    except ConfigError as exc:
        raise ConfigError(f"{where} (http {sc.listen}): {exc}") from None
    return HttpSource(
        f"http:{sc.listen}",
        sc.listen,
        token,
        fmt=sc.format,
        max_alert_bytes=sc.max_alert_bytes,
    )


def build_sources(
    config: Config, cursor_store: CursorStore, extra_paths: Sequence[Path] = ()
) -> list[AlertSource]:
    """The config's [[source]] blocks plus one FileTail per ``serve --alerts PATH`` (format
    detected). The same file twice, or stdin twice, is a ConfigError: two readers of one
    cursor would each deliver every alert."""
    sources: list[AlertSource] = []
    seen: set[str] = set()
    for index, sc in enumerate(config.source, 1):
        source = _build_one(index, sc, cursor_store)
        if source.name in seen:
            raise ConfigError(f"[[source]] #{index}: {source.name} is already a source; remove one")
        seen.add(source.name)
        sources.append(source)
    for path in extra_paths:
        from dfir_ar.sources.tail import FileTail

        name = file_source_name(path)
        if name in seen:
            raise ConfigError(f"--alerts {path}: already followed (given twice or in [[source]])")
        seen.add(name)
        sources.append(FileTail(name, path, cursor_store, max_alert_bytes=DEFAULT_MAX_ALERT_BYTES))
    return sources
