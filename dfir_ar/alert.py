"""The one normalised alert every source produces and the matcher reads. Pure data, no I/O.

Fields stay as the attacker wrote them (strings, unvalidated): validation happens when an alert
becomes an order, so a refusal can name the alert and be counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dfir_ar.rawalert import RawAlert

MANAGER_AGENT_ID = "000"


@dataclass(frozen=True, slots=True)
class Alert:
    rule_id: int
    level: int
    groups: tuple[str, ...] = ()
    id: str | None = None
    timestamp: str | None = None
    description: str = ""
    agent_id: str = MANAGER_AGENT_ID
    agent_name: str = ""
    agent_ip: str | None = None
    srcip: str | None = None
    srcuser: str | None = None
    dstuser: str | None = None
    filename: str | None = None
    location: str = ""
    full_log: str = ""
    #: The alert as Wazuh's alerts.json would carry it; handed to Wazuh-protocol scripts as is.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def group_string(self) -> str:
        """OSSEC/Wazuh's comma-terminated group string (``syslog,sshd,authentication_failed,``)."""
        return "".join(f"{g}," for g in self.groups)

    @property
    def username(self) -> str | None:
        """The account an account-level response acts on: OSSEC's ``user`` is the destination user."""
        return self.dstuser or self.srcuser

    def to_wazuh(self) -> dict[str, Any]:
        """The alerts.json shape (the raw alert when we have one, else rebuilt from fields)."""
        raw = self.raw
        if type(raw) is RawAlert:
            return dict(raw.decoded())
        if raw:
            return dict(raw)
        data: dict[str, Any] = {}
        if self.srcip is not None:
            data["srcip"] = self.srcip
        if self.srcuser is not None:
            data["srcuser"] = self.srcuser
        if self.dstuser is not None:
            data["dstuser"] = self.dstuser
        if self.filename is not None:
            data["filename"] = self.filename
        out: dict[str, Any] = {
            "rule": {
                "level": self.level,
                "id": str(self.rule_id),
                "description": self.description,
                "groups": list(self.groups),
            },
            "agent": {"id": self.agent_id, "name": self.agent_name},
            "location": self.location,
            "full_log": self.full_log,
            "data": data,
        }
        if self.id is not None:
            out["id"] = self.id
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        if self.agent_ip is not None:
            out["agent"]["ip"] = self.agent_ip
        return out


class _Draft:
    """Alert's slots without its frozen ``__setattr__``: filled with plain attribute stores, then
    turned into an Alert by assigning ``__class__`` (allowed: same slots, same base)."""

    __slots__ = Alert.__slots__


def new_alert(
    rule_id: int, level: int, groups: tuple[str, ...], id: str | None, timestamp: str | None,
    description: str, agent_id: str, agent_name: str, agent_ip: str | None, srcip: str | None,
    srcuser: str | None, dstuser: str | None, filename: str | None, location: str, full_log: str,
    raw: Mapping[str, Any],
) -> Alert:
    """``Alert(...)`` for the parse hot path, values already type-checked by the caller.

    The frozen dataclass's ``__init__`` sets each of the 16 fields through
    ``object.__setattr__`` (~3 us an alert, a third of parsing one); this costs ~0.4 us.
    """
    if not _DRAFT_OK:
        return Alert(rule_id, level, groups, id, timestamp, description, agent_id, agent_name,
                     agent_ip, srcip, srcuser, dstuser, filename, location, full_log, raw)
    d: Any = _Draft()
    d.rule_id = rule_id
    d.level = level
    d.groups = groups
    d.id = id
    d.timestamp = timestamp
    d.description = description
    d.agent_id = agent_id
    d.agent_name = agent_name
    d.agent_ip = agent_ip
    d.srcip = srcip
    d.srcuser = srcuser
    d.dstuser = dstuser
    d.filename = filename
    d.location = location
    d.full_log = full_log
    d.raw = raw
    d.__class__ = Alert
    return d  # type: ignore[no-any-return]


def _draft_works() -> bool:
    """The shortcut is used only while new_alert sets exactly Alert's fields (a field added to
    Alert and not here would be left unset) and the interpreter allows the class change."""
    code = new_alert.__code__
    params = code.co_varnames[: code.co_argcount]
    if params != tuple(Alert.__dataclass_fields__) or params != Alert.__slots__:
        return False
    d = _Draft()
    for name in params:
        setattr(d, name, name)
    try:
        d.__class__ = Alert  # type: ignore[assignment]
    except TypeError:
        return False
    return d == Alert(*params)  # type: ignore[arg-type]


_DRAFT_OK = _draft_works()
