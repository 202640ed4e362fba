"""Bytes as read from a file or pipe in, ``(alert or refusal, end offset)`` out. Pure framing.

JSON formats are one record per line; OSSEC alerts.log records are blocks (OssecBlockParser).
A line without its newline yet is kept, not parsed, until the rest arrives (a writer may be in
the middle of it). A line longer than ``max_bytes`` is never buffered whole: its bytes are
dropped as they come and one refusal is emitted when its newline finally arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from dfir_ar.alert import Alert
from dfir_ar.parsers import (
    MalformedAlert,
    OssecBlockParser,
    excerpt,
    parse_json_alert,
    parse_plain_json,
    parse_wazuh_line,
)
from dfir_ar.sources.base import Rejected

Item = tuple[Alert | Rejected, int]
_JSON_PARSERS: dict[str, Callable[[bytes, int], Alert]] = {
    "wazuh": parse_wazuh_line,
    "json": parse_plain_json,
    "auto": parse_json_alert,
}


class RecordReader:
    """Frames and parses one byte stream. ``position`` is the absolute offset up to which every
    byte has been turned into records (or skipped); a cursor never points inside a record."""

    def __init__(
        self,
        fmt: str = "auto",
        max_bytes: int = 262_144,
        start: int = 0,
        *,
        resync: bool = False,
    ) -> None:
        if fmt not in ("auto", "wazuh", "json", "ossec"):
            raise ValueError(f"unknown alert format {fmt!r}")
        self.fmt = fmt
        self.max_bytes = max_bytes
        self._framing: str | None = None if fmt == "auto" else ("ossec" if fmt == "ossec" else "json")
        self._parse_json = _JSON_PARSERS.get(fmt, parse_json_alert)
        self._ossec = OssecBlockParser(max_bytes)
        self._partial = b""
        self._base = start  # absolute offset of self._partial[0]
        self._discarding = False
        self._discarded = 0
        self._discard_head = b""
        # Started in the middle of a file (start_at = "end"): OSSEC lines before the next header
        # belong to a block already written; skip them instead of refusing each.
        self._resync = resync

    @property
    def position(self) -> int:
        """Offset of the first byte not yet part of a complete record."""
        return self._base

    @property
    def framing(self) -> str | None:
        return self._framing

    def feed(self, data: bytes) -> Iterator[Item]:
        """Records completed by ``data``, one at a time (a generator: iterate it to the end).

        Yielding one by one lets the caller handle and drop each alert before the next is
        parsed; a list of a chunk's thousand alerts, each holding its raw dict, kept the
        garbage collector busy for a third of the parse time.
        """
        if not data:
            return
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                self._discarded += len(data)
                self._base += len(data)
                return
            self._discarded += nl + 1
            self._base += nl + 1
            yield from self._end_discard()
            data = data[nl + 1 :]
        buf = self._partial + data if self._partial else data
        self._partial = b""
        lines = buf.split(b"\n")
        rest = lines.pop()
        pos = self._base
        parse, max_bytes = self._parse_json, self.max_bytes
        for line in lines:
            pos += len(line) + 1
            self._base = pos
            if self._framing == "json":
                if not line or line.isspace():
                    continue
                try:
                    yield (parse(line, max_bytes), pos)
                except MalformedAlert as exc:
                    yield (Rejected(str(exc), excerpt(line)), pos)
            else:
                yield from self._line(line, pos)
        if len(rest) > self.max_bytes:
            self._discarding = True
            self._discarded = len(rest)
            self._discard_head = rest[:200]
            self._base += len(rest)
        else:
            self._partial = rest

    def finish(self) -> list[Item]:
        """The input ended (EOF of a pipe, a rotated file): a last line without newline counts."""
        out: list[Item] = []
        if self._discarding:
            out.extend(self._end_discard())
        if self._partial:
            line, self._partial = self._partial, b""
            self._base += len(line)
            out.extend(self._line(line, self._base))
        if self._framing == "ossec":
            for p in self._ossec.flush(self._base):
                out.append(_item(p.item, p.end, p.raw))
        return out

    def _end_discard(self) -> list[Item]:
        reason = f"alert is over {self.max_bytes} bytes ({self._discarded} bytes)"
        self._discarding = False
        if self._framing == "ossec" and self._ossec.pending:
            self._ossec.poison()
            return []
        return [(Rejected(reason, excerpt(self._discard_head)), self._base)]

    def _line(self, line: bytes, end: int) -> list[Item]:
        """One line in the first-line or OSSEC framing (JSON lines take the inline path)."""
        framing = self._framing
        if framing is None:
            stripped = line.strip()
            if not stripped:
                return []
            framing = self._framing = "ossec" if stripped.startswith(b"** Alert ") else "json"
        if framing == "json":
            if not line or line.isspace():
                return []
            try:
                return [(self._parse_json(line, self.max_bytes), end)]
            except MalformedAlert as exc:
                return [(Rejected(str(exc), excerpt(line)), end)]
        if self._resync:
            if not line.startswith(b"** Alert "):
                return []
            self._resync = False
        return [_item(p.item, p.end, p.raw) for p in self._ossec.feed(line, end)]


def _item(item: Alert | MalformedAlert, end: int, raw: bytes) -> Item:
    if isinstance(item, Alert):
        return (item, end)
    return (Rejected(str(item), excerpt(raw)), end)
