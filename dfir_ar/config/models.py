"""Pydantic models of the native TOML config. The OSSEC/Wazuh import produces the same models.

Cross-references (a binding naming a command, a command naming a plug-in) are checked in
``dfir_ar.config.load`` where the file name is known, so errors can say where and how to fix.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dfir_ar.errors import InvalidAddress
from dfir_ar.validate import parse_network


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Matching(StrEnum):
    OSSEC = "ossec"  # level OR rules_group OR rules_id
    WAZUH = "wazuh"  # (level AND rules_group when both set) OR rules_id


class Location(StrEnum):
    LOCAL = "local"
    SERVER = "server"
    DEFINED_AGENT = "defined-agent"
    ALL = "all"


LOCATION_ALIASES = {
    "local": Location.LOCAL,
    "server": Location.SERVER,
    "as": Location.SERVER,
    "analysisd": Location.SERVER,
    "analysis-server": Location.SERVER,
    "defined-agent": Location.DEFINED_AGENT,
    "all": Location.ALL,
    "any": Location.ALL,
}


class Protocol(StrEnum):
    """How an external script in active_response_dir is spoken to."""

    OSSEC = "ossec"  # argv: add|delete user srcip alert_id rule_id location filename
    WAZUH = "wazuh"  # one JSON line on stdin, check_keys handshake


class GlobalConfig(Strict):
    state_dir: Path = Path("/var/lib/dfir-ar")
    log_dir: Path = Path("/var/log/dfir-ar")
    active_response_dir: Path = Path("/var/ossec/active-response/bin")
    white_list: tuple[str, ...] = ()
    matching: Matching = Matching.WAZUH
    agent_id: str = "000"
    agent_name: str = ""
    """Defaults to the host name."""
    workers: int = Field(default=8, ge=1, le=256)
    max_active_responses: int = Field(default=200_000, ge=1)
    """Global cap on stateful responses in place at once; past it, new ones are refused."""
    offender_window: float = Field(default=86_400.0, gt=0)
    """Seconds after which a repeat-offender counter decays (Wazuh never resets it)."""
    lift_on_stop: bool = False
    """Undo every active response on a graceful stop (what OSSEC and Wazuh do). Off: blocks stay,
    and the next start reconciles them."""
    protect_gateway: bool = True
    protect_own_addresses: bool = True
    control_socket: Path | None = None
    """Defaults to ``<state_dir>/control.sock``."""
    execution_deadline: float = Field(default=60.0, gt=0)
    """Seconds an add/delete may take before its process group is killed."""
    repair_interval: float = Field(default=10.0, ge=0)
    """Seconds between checks that containment someone else purged (e.g. ``nft flush ruleset``)
    is intact, repaired when not; 0 turns the check off."""

    @field_validator("white_list")
    @classmethod
    def _white_list(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                parse_network(entry)
            except InvalidAddress as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def socket_path(self) -> Path:
        return self.control_socket or self.state_dir / "control.sock"


class CommandConfig(Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    executable: str = Field(min_length=1, max_length=255)
    """A plug-in name (host-deny, pcap, ...) or a file name inside active_response_dir."""
    expect: tuple[Literal["srcip", "username", "user", "filename"], ...] = ()
    timeout_allowed: bool = False
    extra_args: tuple[str, ...] = ()
    protocol: Protocol = Protocol.WAZUH
    deadline: float | None = Field(default=None, gt=0)
    """Seconds one execution may run; defaults to global.execution_deadline, or for a collector,
    its duration plus a margin."""
    max_per_minute: int | None = Field(default=None, ge=1)
    """Per-command rate limit; executions past it are refused with a log line."""

    @field_validator("executable")
    @classmethod
    def _executable(cls, value: str) -> str:
        if "/" in value or value in (".", "..") or "\x00" in value:
            raise ValueError(
                "must be a plug-in name or a bare file name inside active_response_dir "
                "(no '/' and no '..')"
            )
        return value

    @property
    def expects_srcip(self) -> bool:
        return "srcip" in self.expect

    @property
    def expects_username(self) -> bool:
        return "username" in self.expect or "user" in self.expect


class ActiveResponseConfig(Strict):
    command: str
    location: Location = Location.LOCAL
    agent_id: tuple[str, ...] = ()
    level: int | None = Field(default=None, ge=0, le=20)
    rules_id: tuple[int, ...] = ()
    rules_group: str | None = None
    """OSSEC/Wazuh semantics: substring of the rule's group string; '|' separates alternatives."""
    timeout: float | None = Field(default=None, ge=0)
    repeated_offenders: tuple[float, ...] = Field(default=(), max_length=5)
    """Minutes for the 2nd, 3rd, ... offence (Wazuh); the last value applies after that."""
    disabled: bool = False
    apply_white_list: bool = True
    """Opt-out for responses that do not act on the source address (e.g. a collector or an
    account response); never allowed for one that contains by srcip."""

    @field_validator("location", mode="before")
    @classmethod
    def _location(cls, value: Any) -> Any:
        if isinstance(value, str):
            loc = LOCATION_ALIASES.get(value.strip().lower())
            if loc is None:
                raise ValueError(
                    "must be one of local, server, defined-agent, all "
                    "(aliases: AS, analysisd, analysis-server, any)"
                )
            return loc
        return value

    @field_validator("repeated_offenders")
    @classmethod
    def _offenders(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(v <= 0 for v in value):
            raise ValueError("every repeated_offenders value must be a positive number of minutes")
        return value

    @field_validator("agent_id", mode="before")
    @classmethod
    def _agent_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v for v in value.replace(",", " ").split() if v)
        return value

    @model_validator(mode="after")
    def _check(self) -> ActiveResponseConfig:
        if self.location is Location.DEFINED_AGENT and not self.agent_id:
            raise ValueError("location = \"defined-agent\" needs agent_id")
        if self.level is None and not self.rules_id and not self.rules_group:
            raise ValueError("needs at least one of level, rules_id, rules_group (or it never fires)")
        return self


class SourceConfig(Strict):
    type: Literal["file", "stdin", "http"]
    path: Path | None = None
    format: Literal["auto", "wazuh", "ossec", "json"] = "auto"
    listen: str = "127.0.0.1:8787"
    """host:port for type = "http"; loopback by default."""
    token: str | None = Field(default=None, min_length=16)
    token_file: Path | None = None
    max_alert_bytes: int = Field(default=262_144, ge=1024)
    start_at: Literal["end", "beginning"] = "end"
    """type = "file", first start only (no saved cursor yet): "end" follows only new alerts, like
    Wazuh's only-future-events, so old alerts do not trigger fresh blocks; "beginning" reads the
    whole file. Later starts always resume from the saved cursor."""

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        if self.type == "file" and self.path is None:
            raise ValueError('type = "file" needs path')
        if self.type == "http" and not (self.token or self.token_file):
            raise ValueError('type = "http" needs token or token_file (a bearer token is required)')
        return self


class EvidenceConfig(Strict):
    store: str = "file:///var/lib/dfir-ar/evidence"
    """``file:///DIR`` or ``s3://BUCKET/PREFIX``."""
    spool_dir: Path | None = None
    """Defaults to ``<state_dir>/spool``."""
    spool_quota_mb: int = Field(default=10_240, ge=1)
    min_free_mb: int = Field(default=512, ge=0)
    """Collectors stop (partial) rather than take the spool's disk below this."""
    max_bundle_mb: int = Field(default=4096, ge=1)
    signing_key: Path | None = None
    """ed25519 private key (PEM) from ``dfir-ar keys generate``; bundles are unsigned without it."""
    verify_key: Path | None = None
    """ed25519 public key (PEM) used by ``bundles verify|get``."""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    sse: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = None
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = None
    object_lock_days: int | None = Field(default=None, ge=1)
    multipart_threshold_mb: int = Field(default=16, ge=5)
    """Bundles from this size on go up as multipart (parallel parts, resumable)."""
    part_size_mb: int = Field(default=16, ge=5)
    """Multipart part size; grown as needed so a bundle fits S3's 10,000 parts. 16 MiB measured
    best against SeaweedFS (bench/upload); larger parts help on high-latency links."""
    upload_concurrency: int = Field(default=8, ge=1, le=64)
    upload_rate_limit_mbps: float | None = Field(default=None, gt=0)
    """Cap on upload bandwidth in MiB/s (all parts together); None: as fast as the link goes."""
    content_md5: bool = False
    """Also send Content-MD5 on every write, for S3 clones that ignore x-amz-checksum-sha256."""
    retry_max_seconds: float = Field(default=300.0, gt=0)
    """Longest back-off between upload attempts while the store is down."""

    @model_validator(mode="after")
    def _check(self) -> EvidenceConfig:
        if not (self.store.startswith("file://") or self.store.startswith("s3://")):
            raise ValueError("store must start with file:// or s3://")
        if (self.object_lock_mode is None) != (self.object_lock_days is None):
            raise ValueError("object_lock_mode and object_lock_days go together")
        return self


class Config(Strict):
    """The whole configuration. ``source_file`` is where it was read from (for messages)."""

    global_: GlobalConfig = Field(default_factory=GlobalConfig, alias="global")
    command: tuple[CommandConfig, ...] = ()
    active_response: tuple[ActiveResponseConfig, ...] = ()
    source: tuple[SourceConfig, ...] = ()
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    responders: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-responder settings tables, ``[responders.firewall-drop]``; validated by the plug-in."""
    collectors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-collector settings tables, ``[collectors.yara]``; validated by the plug-in."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def command_named(self, name: str) -> CommandConfig | None:
        for cmd in self.command:
            if cmd.name == name:
                return cmd
        return None

    @property
    def spool_dir(self) -> Path:
        return self.evidence.spool_dir or self.global_.state_dir / "spool"
