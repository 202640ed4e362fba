"""A small TOML writer for what `dfir-ar config import` prints: tables, arrays of tables, strings,
numbers, booleans and flat arrays -- all the config uses. (tomllib reads; the stdlib has no writer.)"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and bool(value)
        and all(isinstance(v, Mapping) for v in value)
    )


def _emit(lines: list[str], prefix: str, table: Mapping[str, Any]) -> None:
    for key, value in table.items():
        if value is None or _is_table(value) or _is_table_array(value):
            continue
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        name = f"{prefix}.{_key(key)}" if prefix else _key(key)
        if _is_table(value):
            lines.append("")
            lines.append(f"[{name}]")
            _emit(lines, name, value)
        elif _is_table_array(value):
            for item in value:
                lines.append("")
                lines.append(f"[[{name}]]")
                _emit(lines, name, item)


def dumps(data: Mapping[str, Any], header: str = "") -> str:
    lines: list[str] = [f"# {line}" if line else "#" for line in header.splitlines()]
    _emit(lines, "", data)
    return "\n".join(lines).lstrip("\n") + "\n"
