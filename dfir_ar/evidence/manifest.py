"""The bundle manifest: what was collected, by whom, why, and the SHA-256 of every artifact.

The manifest is serialised once, canonically (sorted keys, UTF-8, no insignificant whitespace),
and those exact bytes are what ``manifest.sig`` signs and what goes into the archive. Anyone can
re-check a bundle with ``dfir-ar bundles verify`` or by hand (``sha256sum`` over the extracted
artifacts, ``openssl pkeyutl -verify`` over ``manifest.json``).
"""

from __future__ import annotations

import json
import platform
import socket
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dfir_ar import __version__
from dfir_ar.collector import Status

if TYPE_CHECKING:
    from dfir_ar.config.models import Config
    from dfir_ar.order import Order

SCHEMA_VERSION: Literal[1] = 1
MEDIA_JSONL = "application/x-ndjson"
MEDIA_JSON = "application/json"
MEDIA_PCAP = "application/vnd.tcpdump.pcap"
MEDIA_OCTETS = "application/octet-stream"
MEDIA_TEXT = "text/plain; charset=utf-8"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentInfo(_Model):
    """The host the evidence came from, as it described itself when the bundle was sealed."""

    id: str
    hostname: str
    name: str = ""
    """The configured agent name (global.agent_name), when it differs from the host name."""
    addresses: tuple[str, ...] = ()
    os: str = ""
    kernel: str = ""
    machine: str = ""

    @classmethod
    def current(cls, config: Config | None = None) -> AgentInfo:
        agent_id = config.global_.agent_id if config is not None else "000"
        hostname = socket.gethostname()
        return cls(
            id=agent_id,
            hostname=hostname,
            name=(config.global_.agent_name if config is not None else "") or hostname,
            addresses=tuple(_own_addresses()),
            os=_os_name(),
            kernel=f"{platform.system()} {platform.release()} {platform.version()}".strip(),
            machine=platform.machine(),
        )


def _own_addresses() -> list[str]:
    """Every address on every interface except loopback, sorted (psutil reads netlink/ioctl)."""
    import psutil

    found: set[str] = set()
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                ip = addr.address.split("%", 1)[0]
                if ip in ("127.0.0.1", "::1"):
                    continue
                found.add(ip)
    return sorted(found)


def _os_name() -> str:
    try:
        info = platform.freedesktop_os_release()
    except OSError:
        return platform.system()
    return info.get("PRETTY_NAME") or info.get("NAME") or platform.system()


class Trigger(_Model):
    """Why this evidence was collected: the alert and order, or the operator of a manual run."""

    alert_id: str | None = None
    rule_id: int | None = None
    level: int | None = None
    groups: tuple[str, ...] = ()
    srcip: str | None = None
    username: str | None = None
    order_id: str | None = None
    command: str | None = None
    operator: str | None = None

    @classmethod
    def from_order(cls, order: Order) -> Trigger:
        alert = order.alert
        target = order.target
        return cls(
            alert_id=alert.id if alert is not None else None,
            rule_id=alert.rule_id if alert is not None else None,
            level=alert.level if alert is not None else None,
            groups=tuple(alert.groups) if alert is not None else (),
            # The validated target, never the raw alert string: the manifest is evidence too.
            srcip=str(target.srcip) if target.srcip is not None else None,
            username=target.username,
            order_id=order.id,
            command=order.command,
            operator=order.operator,
        )

    @classmethod
    def manual(cls, operator: str, *, srcip: str | None = None, username: str | None = None,
               command: str | None = None) -> Trigger:
        return cls(operator=operator, srcip=srcip, username=username, command=command)


class ArtifactEntry(_Model):
    path: str
    """Path inside the archive: ``artifacts/<collector>/<relpath>``."""
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    media_type: str


class CollectorRecord(_Model):
    name: str
    version: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    started: datetime
    ended: datetime
    status: Status
    reason: str = ""
    """Why partial (deadline, byte cap, disk floor ...)."""
    error: str = ""
    """Why failed: the exception, as an analyst reads it."""
    details: dict[str, Any] = Field(default_factory=dict)


class Manifest(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    bundle_id: str
    created: datetime
    agent: AgentInfo
    trigger: Trigger
    tools: dict[str, str] = Field(default_factory=dict)
    collectors: tuple[CollectorRecord, ...] = ()
    artifacts: tuple[ArtifactEntry, ...] = ()
    signed: bool = False
    """True when the archive carries ``manifest.sig``; a stripped signature then fails verify."""
    signer: str | None = None
    """SHA-256 fingerprint of the signing public key (raw 32 bytes), to pick the key to verify."""

    @property
    def status(self) -> Status:
        """The worst collector status (an empty bundle is FAILED: nothing was collected)."""
        if not self.collectors:
            return Status.FAILED
        order = {Status.OK: 0, Status.PARTIAL: 1, Status.FAILED: 2}
        return max((c.status for c in self.collectors), key=order.__getitem__)

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        return cls.model_validate_json(data)


def canonical_json(data: Any) -> bytes:
    """Sorted keys, UTF-8, compact separators: one byte string per manifest, stable to sign."""
    return json.dumps(
        data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def tool_versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """dfir-ar and Python always; collectors add the libraries they used (scapy, yara-python)."""
    versions = {
        "dfir-ar": __version__,
        "python": sys.version.split()[0],
    }
    if extra:
        versions.update(extra)
    return versions


def module_version(module_name: str) -> str | None:
    """The installed distribution version of a module already imported, else None (no import)."""
    module = sys.modules.get(module_name)
    if module is None:
        return None
    value = getattr(module, "__version__", None) or getattr(module, "YARA_VERSION", None)
    return str(value) if value is not None else None
