"""The one normalised alert every source produces and the matcher reads. Pure data, no I/O.

Fields stay as the attacker wrote them (strings, unvalidated): validation happens when an alert
becomes an order, so a refusal can name the alert and be counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
        if self.raw:
            return dict(self.raw)
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
