"""Wazuh's active-response wire protocol (Wazuh >= 4.2), both sides of it.

execd writes ONE JSON line on a script's stdin and leaves stdin open::

    {"version":1,"origin":{"name":"node01","module":"wazuh-execd"},"command":"add",
     "parameters":{"extra_args":[],"alert":{...},"program":"active-response/bin/firewall-drop"}}

A stateful script answers on stdout with ``check_keys`` and its keys; execd replies with the same
message whose ``command`` is ``continue`` (not active yet) or ``abort`` (already active: execd
refreshes the timer). The later ``delete`` is a new process given the same message with
``"command":"delete"``. Wazuh dedups on (program basename, the keys joined by ``-``).

Used by ``responders.external`` (dfir-ar plays execd) and ``dfir-ar wazuh-ar`` (dfir-ar plays the
script). The message models and the pure helpers come first; ``FdLineReader`` is the one piece of
I/O: line reads from a pipe with a deadline, because a peer that never writes must not hang us
(Wazuh #29602).
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Collection, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dfir_ar.errors import DeadlineExceeded, InvalidArgument

VERSION = 1
MAX_LINE = 1 << 20
"""Longest message line accepted (bytes). Wazuh alerts with a long full_log stay well below."""
MAX_KEYS = 16
MAX_KEY_LEN = 256
EXECD_MODULE = "wazuh-execd"
SCRIPT_MODULE = "active-response"

Answer = Literal["continue", "abort"]
INPUT_COMMANDS = frozenset({"add", "delete"})
ANSWERS = frozenset({"continue", "abort"})


class Origin(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = ""
    module: str = ""


class Parameters(BaseModel):
    """``parameters`` of every message kind; unknown members are kept and passed on."""

    model_config = ConfigDict(extra="allow")

    extra_args: list[str] = Field(default_factory=list)
    alert: dict[str, Any] = Field(default_factory=dict)
    program: str = ""
    keys: list[str] = Field(default_factory=list)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: int = VERSION
    origin: Origin = Field(default_factory=Origin)
    command: str
    parameters: Parameters = Field(default_factory=Parameters)

    def with_command(self, command: str) -> Message:
        """The same message with another ``command`` (the delete run; the continue/abort reply)."""
        return self.model_copy(update={"command": command}, deep=True)


def encode(message: Message) -> bytes:
    """One compact JSON line, as cJSON_PrintUnformatted writes it, plus the newline."""
    data = message.model_dump(mode="json", exclude_defaults=False)
    params = data.get("parameters", {})
    # Wazuh's execd never sends "keys" and its scripts never send "alert": omit empty members
    # so the bytes on the wire look like what each side expects.
    if not params.get("keys"):
        params.pop("keys", None)
    if message.command == "check_keys" or message.command in ANSWERS:
        for name in ("alert", "extra_args", "program"):
            if not params.get(name):
                params.pop(name, None)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def parse_message(line: bytes | str, *, expect: Collection[str] | None = None) -> Message:
    """Parse one protocol line; raise InvalidArgument saying what is wrong with it."""
    if isinstance(line, str):
        line = line.encode("utf-8", "surrogateescape")
    if len(line) > MAX_LINE:
        raise InvalidArgument(f"Wazuh message is {len(line)} bytes; the limit is {MAX_LINE}")
    text = line.strip()
    if not text:
        raise InvalidArgument("empty Wazuh message (expected one JSON line)")
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"Wazuh message is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("Wazuh message is not a JSON object")
    try:
        message = Message.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise InvalidArgument(f"Wazuh message, {where}: {first['msg']}") from None
    if message.version != VERSION:
        raise InvalidArgument(
            f"Wazuh message version {message.version} is not supported (expected {VERSION})"
        )
    if expect is not None and message.command not in expect:
        wanted = ", ".join(sorted(expect))
        raise InvalidArgument(f"Wazuh message command {message.command!r}; expected one of {wanted}")
    for key in message.parameters.keys:
        check_key(key)
    if len(message.parameters.keys) > MAX_KEYS:
        raise InvalidArgument(f"check_keys sent {len(message.parameters.keys)} keys; at most {MAX_KEYS}")
    return message


def check_key(key: str) -> str:
    """A key is only compared and logged, but it is attacker-derived: keep it small and printable."""
    if not key or len(key) > MAX_KEY_LEN or not key.isprintable():
        raise InvalidArgument(f"check_keys key {key[:40]!r} is empty, too long or not printable")
    return key


def execd_message(
    command: str,
    *,
    alert: Mapping[str, Any],
    extra_args: Collection[str],
    program: str,
    node: str,
) -> Message:
    """The message execd writes to a script's stdin."""
    return Message(
        origin=Origin(name=node, module=EXECD_MODULE),
        command=command,
        parameters=Parameters(extra_args=list(extra_args), alert=dict(alert), program=program),
    )


def check_keys_message(script_name: str, keys: Collection[str]) -> Message:
    """What a stateful script writes to stdout before acting."""
    return Message(
        origin=Origin(name=script_name, module=SCRIPT_MODULE),
        command="check_keys",
        parameters=Parameters(keys=[check_key(k) for k in keys]),
    )


def joined_keys(keys: Collection[str]) -> str:
    """Wazuh execd's dedup string for a script's keys (it joins them with '-')."""
    return "-".join(keys)


def alert_data(alert: Mapping[str, Any]) -> Mapping[str, Any]:
    """``alert.data`` (where Wazuh's own scripts read srcip and dstuser), or {}."""
    data = alert.get("data")
    return data if isinstance(data, Mapping) else {}


class FdLineReader:
    """Read newline-terminated lines from a pipe fd, never blocking past a deadline.

    Raw ``os.read`` on a selected fd with our own buffer: mixing ``select`` with Python's
    buffered readers loses data that sits in the buffer while select says "nothing to read".
    """

    def __init__(self, fd: int, max_line: int = MAX_LINE) -> None:
        self.fd = fd
        self.max_line = max_line
        self._buf = bytearray()
        self.eof = False

    def readline(self, deadline: float, what: str = "a line") -> bytes | None:
        """The next line (without its newline), or None at EOF with nothing buffered.

        ``deadline`` is ``time.monotonic()`` time; past it, DeadlineExceeded.
        """
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > self.max_line:
                raise InvalidArgument(f"{what} is longer than {self.max_line} bytes")
            if self.eof:
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"no {what} before the deadline")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
            else:
                self._buf += chunk
