"""The forensic plug-in contract: a collector writes artifacts only through the sink it is given
(which hashes while writing), honours a deadline, a byte cap and a cancel flag, and reports
progress. It returns how it ended; the bundle records that in the manifest.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from dfir_ar.clock import Clock, SystemClock
from dfir_ar.errors import InvalidArgument
from dfir_ar.responder import Arg, Target


class Status(StrEnum):
    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    reason: str = ""
    """Why partial or failed, in words an analyst reads in the manifest."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Collector-specific facts for the manifest (e.g. kernel drop counts)."""


class ArtifactWriter(Protocol):
    """A file-like target that hashes what it is given; ``write`` raises ByteCapReached at the cap."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...

    @property
    def size(self) -> int: ...


class ByteCapReached(Exception):
    # Named for what happened (a signal to stop), not as an error.
    """The collection's byte cap was hit; the collector stops and reports PARTIAL."""


class ArtifactSink(Protocol):
    def artifact(
        self, relpath: str, media_type: str
    ) -> AbstractContextManager[ArtifactWriter]:
        """Open ``artifacts/<collector>/<relpath>`` for writing; closed = hashed and recorded."""
        ...

    @property
    def bytes_remaining(self) -> int: ...


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One ``--name value`` option a collector takes from its command's extra_args."""

    name: str
    type: type  # int, float, str, bool, or list (repeatable str)
    default: Any
    help: str


@dataclass
class CollectJob:
    """Everything one collection run gets."""

    target: Target
    options: Mapping[str, Any]
    deadline: float
    """Monotonic time (``clock.monotonic()``) by which collect() must have returned."""
    max_bytes: int
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[str, float | None], None] = lambda message, fraction: None
    clock: Clock = field(default_factory=SystemClock)
    order_id: str = ""

    def remaining(self) -> float:
        return self.deadline - self.clock.monotonic()

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.remaining() <= 0


class NoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class CollectorContext:
    state_dir: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    """The ``[collectors.<name>]`` config table, validated by ``Collector.Settings`` at load."""
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("dfir_ar.collector"))


class Collector(ABC):
    """Base of every evidence plug-in."""

    name: ClassVar[str]
    expects: ClassVar[tuple[Arg, ...]] = ()
    version: ClassVar[str] = "1"
    option_specs: ClassVar[tuple[OptionSpec, ...]] = ()
    default_duration: ClassVar[float] = 600.0
    Settings: ClassVar[type[BaseModel]] = NoSettings
    """Pydantic model of the ``[collectors.<name>]`` config table (checked at config load)."""

    def __init__(self, context: CollectorContext) -> None:
        self.context = context
        self.settings = self.Settings.model_validate(dict(context.settings))

    @classmethod
    def check_compatible(cls) -> None:
        """Raise PluginUnavailable (with an install hint) if this host cannot run the collector."""

    @classmethod
    def parse_options(cls, extra_args: Sequence[str]) -> dict[str, Any]:
        return parse_options(cls.option_specs, extra_args, cls.name)

    @abstractmethod
    def collect(self, job: CollectJob, sink: ArtifactSink) -> Outcome:
        """Gather evidence into ``sink``; stop early (PARTIAL) on deadline, cap or cancel."""


def parse_options(
    specs: Sequence[OptionSpec], extra_args: Sequence[str], owner: str
) -> dict[str, Any]:
    """Turn ``["--duration", "60", "--path", "/a", "--path", "/b"]`` into typed values.

    Unknown names and unparsable values raise InvalidArgument naming the option and the fix.
    """
    by_name = {s.name: s for s in specs}
    values: dict[str, Any] = {
        s.name: (list(s.default) if s.type is list else s.default) for s in specs
    }
    args = list(extra_args)
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            raise InvalidArgument(f"{owner}: expected an option like --name, got {token!r}")
        name, eq, inline = token[2:].partition("=")
        spec = by_name.get(name.replace("_", "-")) or by_name.get(name)
        if spec is None:
            known = ", ".join(f"--{n}" for n in by_name) or "none"
            raise InvalidArgument(f"{owner}: unknown option --{name} (known: {known})")
        if spec.type is bool and not eq:
            values[spec.name] = True
            i += 1
            continue
        if eq:
            raw = inline
            i += 1
        else:
            if i + 1 >= len(args):
                raise InvalidArgument(f"{owner}: option --{name} needs a value")
            raw = args[i + 1]
            i += 2
        values[spec.name] = _convert(spec, raw, owner, values[spec.name])
    return values


def _convert(spec: OptionSpec, raw: str, owner: str, current: Any) -> Any:
    try:
        if spec.type is list:
            return [*current, raw]
        if spec.type is bool:
            if raw.lower() in ("1", "yes", "true", "on"):
                return True
            if raw.lower() in ("0", "no", "false", "off"):
                return False
            raise ValueError(raw)
        if spec.type is int:
            return int(raw, 10)
        if spec.type is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        return str(raw)
    except ValueError:
        raise InvalidArgument(
            f"{owner}: --{spec.name} {raw!r} is not a valid {spec.type.__name__}"
        ) from None
