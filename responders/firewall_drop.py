"""firewall-drop: drop every packet from the attacker's address, for the response's timeout.

Same name and purpose as OSSEC's and Wazuh's script, which insert one iptables rule per address
into INPUT and FORWARD (15 ms per address on an empty table, seconds each at 100k rules) and keep
the undo in memory only. Here a block is an element of a kernel set with its own timeout
(nftables by default, ipset as fallback), written in batched atomic transactions, so it expires
on time even if dfir-ar is dead, and a protected address is refused twice: here, and by an allow
set the kernel checks first.

Config (all optional)::

    [responders.firewall-drop]
    backend = "auto"        # auto | nftables | ipset | iptables
    table = "dfir_ar"       # nftables table (family inet)
    priority = -10          # nftables hook priority of the input/forward chains
    set_prefix = "dfir_ar"  # ipset names: dfir_ar4, dfir_ar6, dfir_ar_allow4, dfir_ar_allow6
    ipset_chain = "DFIR_AR_SET"
    iptables_chain = "DFIR_AR"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from dfir_ar.errors import InvalidArgument, PluginUnavailable, Refused
from dfir_ar.netfilter import BackendName, Block, FirewallBackend, make_backend, tools_present
from dfir_ar.responder import (
    Arg,
    LiveEntry,
    ReconcileReport,
    Request,
    Responder,
    ResponderContext,
    State,
)
from dfir_ar.validate import IPAddress


class FirewallDropOptions(BaseModel):
    """The ``[responders.firewall-drop]`` table."""

    model_config = ConfigDict(extra="forbid")
    backend: BackendName = "auto"
    table: str = "dfir_ar"
    priority: int = Field(default=-10, ge=-400, le=400)
    set_prefix: str = "dfir_ar"
    ipset_chain: str = "DFIR_AR_SET"
    iptables_chain: str = "DFIR_AR"


@dataclass
class BatchResult:
    """What ``add_many`` did: per request, the state to store, or why it was refused."""

    added: list[tuple[Request, State]] = field(default_factory=list)
    refused: list[tuple[Request, str]] = field(default_factory=list)


class FirewallDrop(Responder):
    """Drop all packets from the source address (nftables/ipset sets with kernel timeouts)."""

    name: ClassVar[str] = "firewall-drop"
    expects: ClassVar[tuple[Arg, ...]] = (Arg.SRCIP,)
    supports_timeout: ClassVar[bool] = True
    version: ClassVar[str] = "1"
    Options: ClassVar[type[BaseModel]] = FirewallDropOptions

    def __init__(self, context: ResponderContext, backend: FirewallBackend | None = None) -> None:
        super().__init__(context)
        opts = self.options
        assert isinstance(opts, FirewallDropOptions)
        self.backend = backend or make_backend(
            opts.backend,
            list(context.white_list),
            table=opts.table,
            priority=opts.priority,
            set_prefix=opts.set_prefix,
            ipset_chain=opts.ipset_chain,
            iptables_chain=opts.iptables_chain,
        )
        self._ready = False

    @classmethod
    def check_compatible(cls) -> None:
        if not any(tools_present().values()):
            raise PluginUnavailable(
                "neither libnftables, ipset nor iptables is installed",
                hint="apt-get install nftables",
            )

    # -- helpers -----------------------------------------------------------------------------

    def _ensure(self) -> None:
        if not self._ready:
            self.backend.ensure()
            self._ready = True

    @staticmethod
    def _addr(request: Request) -> IPAddress:
        if request.target.srcip is None:
            raise InvalidArgument("firewall-drop needs srcip; the order has none")
        return request.target.srcip

    def _protected(self, addr: IPAddress) -> bool:
        return any(addr in net for net in self.context.white_list if net.version == addr.version)

    @staticmethod
    def _timeout(timeout: float | None) -> float | None:
        # Wazuh/OSSEC: a timeout of 0 means "no undo"; in the kernel that is an element
        # without timeout.
        return timeout if timeout is not None and timeout > 0 else None

    def _state(self, addr: IPAddress) -> State:
        return {
            "backend": self.backend.name,
            "addr": str(addr),
            "kernel_expiry": self.backend.kernel_expiry,
        }

    # -- the responder contract --------------------------------------------------------------

    def key(self, request: Request) -> str:
        return str(self._addr(request))

    def add(self, request: Request) -> State:
        addr = self._addr(request)
        if self._protected(addr):
            raise Refused(
                f"firewall-drop: {addr} is protected (white list, own address, loopback or "
                "gateway); not blocked"
            )
        self._ensure()
        self.backend.add([Block(addr, self._timeout(request.timeout))])
        self.context.log.info("firewall-drop: blocked %s (%s)", addr, self.backend.name)
        return self._state(addr)

    def add_many(self, requests: Sequence[Request]) -> BatchResult:
        """Block many addresses in one atomic batch (one transaction on nftables, one ``ipset
        restore``). Protected or address-less requests are refused individually."""
        result = BatchResult()
        blocks: list[Block] = []
        for request in requests:
            addr = request.target.srcip
            if addr is None:
                result.refused.append((request, "no srcip"))
            elif self._protected(addr):
                result.refused.append((request, f"{addr} is protected"))
            else:
                blocks.append(Block(addr, self._timeout(request.timeout)))
                result.added.append((request, self._state(addr)))
        if blocks:
            self._ensure()
            self.backend.add(blocks)
        return result

    def delete(self, request: Request, state: State) -> None:
        addr = self._addr(request)
        self._ensure()
        self.backend.delete([addr])
        self.context.log.info("firewall-drop: unblocked %s (%s)", addr, self.backend.name)

    def refresh(self, request: Request, state: State, timeout: float | None) -> None:
        addr = self._addr(request)
        if self._protected(addr):
            return
        self._ensure()
        self.backend.add([Block(addr, self._timeout(timeout))])

    def active(self) -> set[str]:
        return {str(a) for a in self.backend.active()}

    def reconcile(self, live: Sequence[LiveEntry]) -> ReconcileReport:
        """One replace: the structure re-created if purged, and the block sets made exactly the
        live entries with their remaining time (one transaction on nftables)."""
        notes: list[str] = []
        blocks: dict[IPAddress, Block] = {}
        for entry in live:
            addr = entry.request.target.srcip
            if addr is None:
                notes.append(f"firewall-drop: ledger entry {entry.request.order_id} has no srcip")
                continue
            if self._protected(addr):
                notes.append(f"firewall-drop: {addr} is protected now; not re-blocked")
                continue
            if entry.remaining is not None and entry.remaining <= 0:
                continue  # expired while we were down; the ledger runs its undo
            blocks[addr] = Block(addr, self._timeout(entry.remaining))
        present = set(self.backend.active())
        self.backend.replace_all(list(blocks.values()))
        self._ready = True
        readded = len(set(blocks) - present)
        orphans = len(present - set(blocks))
        if orphans:
            notes.append(f"firewall-drop: removed {orphans} block(s) the ledger does not know")
        return ReconcileReport(readded=readded, removed_orphans=orphans, notes=tuple(notes))

    def check_and_repair(self, live: Sequence[LiveEntry]) -> bool:
        """For the engine's periodic tick: if someone purged our table/sets/chains (e.g.
        ``nft flush ruleset`` by a config-management run), rebuild them and re-add ``live``.
        Returns True when a repair was needed. Cheap when intact (no element listing)."""
        if self.backend.intact():
            return False
        self.context.log.warning(
            "firewall-drop: %s was removed by someone else; restoring it with %d block(s)",
            self.backend.describe(), len(live),
        )
        self.reconcile(live)
        return True

    def teardown(self) -> None:
        """Remove everything firewall-drop put in the kernel (uninstall; tests)."""
        self.backend.remove()
        self._ready = False
