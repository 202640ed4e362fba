"""An alerts.json object kept as the line it came in, decoded only when something reads it.

The engine reads a dozen fields of each alert (decoded straight into typed fields by
dfir_ar.parsers); the whole object is needed only when a Wazuh-protocol script is handed the
alert or the alert is written into a log. The line (~0.6 KiB for an sshd alert) also takes a
fifth of the memory of its dict tree (~3 KiB) while alerts wait in queues.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import TYPE_CHECKING, Any

import msgspec

from dfir_ar import codec


def one_line(text: bytes) -> bytes:
    """Valid JSON text as one line that no line-splitting reader can cut: CR and LF can only be
    whitespace between tokens (JSON refuses control characters inside strings), so they become
    spaces; U+0085, U+2028 and U+2029 are escaped by codec.line_safe."""
    if b"\n" in text or b"\r" in text:
        text = text.replace(b"\r", b" ").replace(b"\n", b" ")
    return codec.line_safe(text).strip()


if TYPE_CHECKING:

    class _MappingStruct(msgspec.Struct, Mapping[str, Any]):
        """What type checkers see: a Mapping (at run time it is registered as one)."""

else:
    _MappingStruct = msgspec.Struct


class RawAlert(_MappingStruct, gc=False, eq=False):
    """A read-only mapping over one alerts.json object, decoded (``codec.loads``) on first read.

    Build it only from bytes already known to be one non-empty JSON object that ``codec.loads``
    accepts (dfir_ar.parsers checks that before it builds an Alert). A msgspec Struct rather than
    a class of its own: built in C, and never tracked by the garbage collector (it holds only
    bytes and JSON values, so it cannot be part of a cycle), which the parse stage measured.
    """

    _line: bytes
    _obj: dict[str, Any] | None = None
    _json: bytes | None = None

    @property
    def json(self) -> bytes:
        """The object's JSON text, as received, on one line (no CR, LF, U+0085, U+2028 or
        U+2029; see :func:`one_line`). Not what the engine read when a key occurs twice (it
        keeps the last): records of what was done encode :meth:`decoded` instead."""
        text = self._json
        if text is None:
            text = self._json = one_line(self._line)
        return text

    def decoded(self) -> dict[str, Any]:
        """The decoded object (shared, decoded once: do not modify it)."""
        obj = self._obj
        if obj is None:
            obj = self._obj = codec.loads(self._line)
        return obj

    def __getitem__(self, key: str) -> Any:
        return self.decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.decoded())

    def __len__(self) -> int:
        return len(self.decoded())

    def __contains__(self, key: object) -> bool:
        return key in self.decoded()

    def get(self, key: str, default: Any = None) -> Any:
        return self.decoded().get(key, default)

    def keys(self) -> KeysView[str]:
        return self.decoded().keys()

    def items(self) -> ItemsView[str, Any]:
        return self.decoded().items()

    def values(self) -> ValuesView[Any]:
        return self.decoded().values()

    def __bool__(self) -> bool:
        # An alerts.json object always has its rule: no need to decode to know it is not empty.
        return True

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RawAlert):
            return self._line == other._line or self.decoded() == other.decoded()
        if isinstance(other, Mapping):
            return self.decoded() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a mapping, unhashable like dict

    def __repr__(self) -> str:
        return f"RawAlert({self.json[:200]!r}{'...' if len(self.json) > 200 else ''})"


Mapping.register(RawAlert)
