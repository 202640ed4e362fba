"""The containment plug-in contract: a responder says what it does, how to undo it, and what is
really in place, so the ledger can reconcile after a crash.

Every value a responder receives has been parsed already (``Target``): a responder never sees a raw
alert string where it builds an argv.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import msgspec
from pydantic import BaseModel, ConfigDict

from dfir_ar.alert import Alert
from dfir_ar.clock import Clock, SystemClock
from dfir_ar.errors import InvalidArgument
from dfir_ar.rails import WhiteList
from dfir_ar.validate import IPAddress, IPNetwork

State = dict[str, Any]
"""JSON-serialisable data a responder returns from add() and gets back in delete()."""


class Arg(StrEnum):
    SRCIP = "srcip"
    USERNAME = "username"
    FILENAME = "filename"


class Target(msgspec.Struct, frozen=True, gc=False):
    """The validated arguments of one order (see dfir_ar.validate)."""

    srcip: IPAddress | None = None
    username: str | None = None
    filename: str | None = None


class Request(msgspec.Struct, frozen=True, gc=False):
    """One add/delete request as a responder receives it."""

    command: str
    target: Target
    order_id: str = ""
    timeout: float | None = None
    """Seconds the action should stay in place; backends with kernel expiry use it."""
    extra_args: tuple[str, ...] = ()
    alert: Alert | None = None


class LiveEntry(msgspec.Struct, frozen=True, gc=False):
    """A ledger entry that should be in place now, with the seconds it has left (None: forever)."""

    request: Request
    state: State
    remaining: float | None


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    readded: int = 0
    removed_orphans: int = 0
    notes: tuple[str, ...] = ()


@dataclass
class BatchResult:
    """What ``Responder.add_many`` did: per request, the state to store, or why it was refused."""

    added: list[tuple[Request, State]] = field(default_factory=list)
    refused: list[tuple[Request, str]] = field(default_factory=list)


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class ResponderContext:
    """What the engine gives a responder when it builds one."""

    state_dir: Path
    white_list: Sequence[IPNetwork] = ()
    """Networks never to contain (config white list + own addresses + loopback + gateway)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The ``[responders.<name>]`` table of the config, validated by ``Responder.Options``."""
    clock: Clock = field(default_factory=SystemClock)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("dfir_ar.responder"))


class Responder(ABC):
    """Base of every containment plug-in."""

    name: ClassVar[str]
    expects: ClassVar[tuple[Arg, ...]]
    supports_timeout: ClassVar[bool] = True
    version: ClassVar[str] = "1"
    Options: ClassVar[type[BaseModel]] = NoOptions
    """Pydantic model of the ``[responders.<name>]`` config table."""

    def __init__(self, context: ResponderContext) -> None:
        self.context = context
        self.options = self.Options.model_validate(dict(context.options))
        self._white = WhiteList(context.white_list)

    @classmethod
    def check_compatible(cls) -> None:
        """Raise PluginUnavailable (with an install hint) if this host cannot run the responder."""

    @abstractmethod
    def key(self, request: Request) -> str:
        """What makes two orders the same action (the dedup key), e.g. the address."""

    @abstractmethod
    def add(self, request: Request) -> State:
        """Put the action in place; return what delete() needs to undo exactly this."""

    @abstractmethod
    def delete(self, request: Request, state: State) -> None:
        """The exact inverse of add(). Must succeed (quietly) if the action is already gone."""

    #: True when add_many puts many actions in place in one step (one kernel transaction): the
    #: executor then hands it a chunk of adds at once instead of calling add for each.
    batch_add: ClassVar[bool] = False

    def add_many(self, requests: Sequence[Request]) -> BatchResult:
        """add() for many requests at once (only called when ``batch_add``). Each request ends up
        in ``added`` with its state or in ``refused`` with the reason; raising means none was
        added (the executor then retries them one by one, adds being idempotent)."""
        raise NotImplementedError(f"{self.name} does not add in batches")

    #: True when delete_many lifts many actions in one step (a burst of expiries).
    batch_delete: ClassVar[bool] = False

    def delete_many(self, items: Sequence[tuple[Request, State]]) -> None:
        """delete() of many (request, state) pairs at once (only called when ``batch_delete``):
        all are gone when it returns; raising means the executor retries them one by one,
        deletes being idempotent."""
        raise NotImplementedError(f"{self.name} does not delete in batches")

    def srcip(self, request: Request) -> IPAddress:
        """The order's address; InvalidArgument naming this responder when it has none."""
        if request.target.srcip is None:
            raise InvalidArgument(f"{self.name} needs srcip; the order has none")
        return request.target.srcip

    def is_protected(self, addr: IPAddress) -> bool:
        """True for an address the white list covers (config, own addresses, loopback, gateway):
        the executor checks this too, a responder checks it again before it contains."""
        return self._white.contains(addr)

    def refresh(self, request: Request, state: State, timeout: float | None) -> None:
        """A repeat offence extended the action; backends with kernel timeouts update them."""

    def active(self) -> set[str] | None:
        """Keys really in place now, or None if this responder cannot tell."""
        return None

    def reconcile(self, live: Sequence[LiveEntry]) -> ReconcileReport:
        """Make what is in place match ``live`` after a restart. Default: re-add what is missing."""
        present = self.active()
        if present is None:
            return ReconcileReport(notes=(f"{self.name}: cannot list what is in place",))
        readded = 0
        for entry in live:
            if self.key(entry.request) not in present:
                req = entry.request
                self.add(
                    Request(
                        command=req.command,
                        target=req.target,
                        order_id=req.order_id,
                        timeout=entry.remaining,
                        extra_args=req.extra_args,
                        alert=req.alert,
                    )
                )
                readded += 1
        return ReconcileReport(readded=readded)
