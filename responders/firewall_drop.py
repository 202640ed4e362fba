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
    verify_interval = 10    # seconds between purge checks piggybacked on adds
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from dfir_ar.errors import DfirArError, PluginUnavailable, Refused
from dfir_ar.netfilter import BackendName, Block, FirewallBackend, make_backend, tools_present
from dfir_ar.responder import (
    Arg,
    BatchResult,
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
    backend: BackendName = Field(
        default="auto",
        description="auto | nftables | ipset | iptables; auto takes the first that works here "
        "(nftables, then ipset, then iptables)",
    )
    table: str = Field(default="dfir_ar", description="nftables table (family inet) dfir-ar owns")
    priority: int = Field(
        default=-10, ge=-400, le=400,
        description="hook priority of the nftables input/forward chains (before filter = 0)",
    )
    set_prefix: str = Field(
        default="dfir_ar",
        description="ipset names: <prefix>4, <prefix>6, <prefix>_allow4, <prefix>_allow6",
    )
    ipset_chain: str = Field(default="DFIR_AR_SET",
                             description="iptables chain of the ipset backend")
    iptables_chain: str = Field(
        default="DFIR_AR",
        description="iptables chain of the plain iptables backend (no kernel expiry)",
    )
    verify_interval: float = Field(
        default=10.0, ge=0,
        description="seconds between checks, made on the next add, that nobody purged the "
        "table/sets/chains (0: on every add); check_and_repair does it on the engine's tick",
    )


class _Unclaimed:
    """What ``Claims.claim`` returns when the command did not hold the address before."""


_UNCLAIMED = _Unclaimed()
_Claimed = float | None | _Unclaimed


class Claims:
    """Which command holds which address, shared by every FirewallDrop that writes the same
    kernel sets in this process.

    Two commands may use the firewall-drop plug-in (say "firewall-drop" for an hour and
    "firewall-drop-long" for a day) and block the same address. The kernel has one element per
    address, so: the element carries the longest claim's time; undoing one command's block keeps
    the element while another command still holds it; and a reconcile of one command's ledger
    entries (the executor reconciles per command) keeps the other commands' blocks.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._by_command: dict[str, dict[IPAddress, float | None]] = {}
        """command -> address -> monotonic deadline (None: no expiry)."""

    @staticmethod
    def _later(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else max(a, b)

    def claim(self, command: str, addr: IPAddress, deadline: float | None) -> _Claimed:
        """Record the claim; what it replaced, for ``unclaim`` if the write then fails."""
        held = self._by_command.setdefault(command, {})
        previous = held.get(addr, _UNCLAIMED)
        held[addr] = deadline
        return previous

    def unclaim(self, command: str, addr: IPAddress, previous: _Claimed) -> None:
        """Undo ``claim``: a failed write must not drop an older claim the kernel still holds."""
        if isinstance(previous, _Unclaimed):
            self.release(command, addr)
        else:
            self._by_command.setdefault(command, {})[addr] = previous

    def replace(self, command: str, held: dict[IPAddress, float | None]) -> None:
        self._by_command[command] = dict(held)

    def clear(self) -> None:
        self._by_command.clear()

    def release(self, command: str, addr: IPAddress) -> None:
        self._by_command.get(command, {}).pop(addr, None)

    def effective(self, addr: IPAddress, now: float) -> tuple[bool, float | None]:
        """(held by any command, the latest deadline among the holders)."""
        if len(self._by_command) == 1:  # the common case: one command uses firewall-drop
            only = next(iter(self._by_command.values()))
            if addr not in only:
                return False, 0.0
            d = only[addr]
            return (d is None or d > now), d
        held = False
        deadline: float | None = 0.0
        for claims in self._by_command.values():
            if addr in claims:
                d = claims[addr]
                if d is not None and d <= now:
                    continue
                held = True
                deadline = self._later(deadline, d)
        return held, deadline

    def union(self, now: float) -> dict[IPAddress, float | None]:
        out: dict[IPAddress, float | None] = {}
        for claims in self._by_command.values():
            for addr, d in claims.items():
                if d is not None and d <= now:
                    continue
                out[addr] = self._later(out[addr], d) if addr in out else d
        return out


_CLAIMS: dict[str, Claims] = {}
_CLAIMS_LOCK = threading.Lock()


def _claims_for(location: str) -> Claims:
    """The claims of one set of kernel objects: same table/sets AND same network namespace
    (the namespace of the thread building the responder, which is where it acts)."""
    try:
        netns = os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        netns = 0
    with _CLAIMS_LOCK:
        return _CLAIMS.setdefault(f"{netns}:{location}", Claims())


class FirewallDrop(Responder):
    """Drop all packets from the source address (nftables/ipset sets with kernel timeouts)."""

    name: ClassVar[str] = "firewall-drop"
    expects: ClassVar[tuple[Arg, ...]] = (Arg.SRCIP,)
    supports_timeout: ClassVar[bool] = True
    batch_add: ClassVar[bool] = True
    batch_delete: ClassVar[bool] = True
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
        self.claims = _claims_for(self.backend.describe())
        self._verify_interval = opts.verify_interval
        self._verified_at = context.clock.monotonic()

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

    def _deadline(self, timeout: float | None) -> float | None:
        t = self._timeout(timeout)
        return None if t is None else self.context.clock.monotonic() + t

    def _blocks(self, addrs: Iterable[IPAddress]) -> list[Block]:
        """Kernel blocks for ``addrs``, each with the longest time any command holds it."""
        now = self.context.clock.monotonic()
        out = []
        for addr in addrs:
            held, deadline = self.claims.effective(addr, now)
            if held:
                out.append(Block(addr, None if deadline is None else max(deadline - now, 1.0)))
        return out

    def _write(self, blocks: list[Block]) -> None:
        """Add to the kernel; if that fails because our structure was purged, rebuild it with
        every block held (the new one is already claimed). Called with the claims lock held.

        Some purges do not make the add fail: ``nft flush ruleset`` removes the iptables-nft
        rules of the ipset backend but not the ipsets, so entries land in sets nothing matches.
        Hence the structure is also checked after an add, at most every ``verify_interval``."""
        try:
            self.backend.add(blocks)
        except DfirArError:
            if self.backend.intact():
                raise
            self._repair()
            return
        now = self.context.clock.monotonic()
        if now - self._verified_at >= self._verify_interval:
            self._verified_at = now
            if not self.backend.intact():
                self._repair()

    def _repair(self) -> None:
        self.context.log.warning(
            "firewall-drop: %s was removed by someone else; restoring it with every block held",
            self.backend.describe(),
        )
        self._replace_from_claims()

    def _unwrite(self, addrs: list[IPAddress]) -> None:
        """Remove from the kernel; a purged structure means nothing of ours is enforced, so it
        is rebuilt from the claims (the released one is no longer among them)."""
        try:
            self.backend.delete(addrs)
        except DfirArError:
            if self.backend.intact():
                raise
            self._replace_from_claims()

    # -- the responder contract --------------------------------------------------------------

    def key(self, request: Request) -> str:
        return str(self.srcip(request))

    def add(self, request: Request) -> State:
        addr = self.srcip(request)
        if self.is_protected(addr):
            raise Refused(
                f"firewall-drop: {addr} is protected (white list, own address, loopback or "
                "gateway); not blocked"
            )
        with self.claims.lock:
            self._ensure()
            previous = self.claims.claim(request.command, addr, self._deadline(request.timeout))
            try:
                self._write(self._blocks([addr]))
            except BaseException:
                # Not in place: a claim left behind would come back at the next repair.
                self.claims.unclaim(request.command, addr, previous)
                raise
        self.context.log.info("firewall-drop: blocked %s (%s)", addr, self.backend.name)
        return self._state(addr)

    def add_many(self, requests: Sequence[Request]) -> BatchResult:
        """Block many addresses in one atomic batch (one transaction on nftables, one ``ipset
        restore``). Protected or address-less requests are refused individually."""
        result = BatchResult()
        addrs: list[IPAddress] = []
        replaced: list[tuple[str, IPAddress, _Claimed]] = []
        with self.claims.lock:
            for request in requests:
                addr = request.target.srcip
                if addr is None:
                    result.refused.append((request, "no srcip"))
                elif self.is_protected(addr):
                    result.refused.append((request, f"{addr} is protected"))
                else:
                    deadline = self._deadline(request.timeout)
                    replaced.append(
                        (request.command, addr, self.claims.claim(request.command, addr, deadline))
                    )
                    addrs.append(addr)
                    result.added.append((request, self._state(addr)))
            if addrs:
                try:
                    self._ensure()
                    self._write(self._blocks(dict.fromkeys(addrs)))
                except BaseException:
                    for command, addr, previous in reversed(replaced):  # none is in place
                        self.claims.unclaim(command, addr, previous)
                    raise
        if addrs:
            self.context.log.info("firewall-drop: blocked %d address(es) in one batch (%s)",
                                  len(addrs), self.backend.name)
        return result

    def delete(self, request: Request, state: State) -> None:
        addr = self.srcip(request)
        if self._lift([request]):
            self.context.log.info("firewall-drop: unblocked %s (%s)", addr, self.backend.name)
        else:
            self.context.log.info(
                "firewall-drop: %s stays blocked (held by another command)", addr)

    def delete_many(self, items: Sequence[tuple[Request, State]]) -> None:
        """Unblock many addresses in one batch (a burst of expiries): one transaction on
        nftables, one ``ipset restore``."""
        gone = self._lift([request for request, _ in items])
        self.context.log.info("firewall-drop: unblocked %d address(es) in one batch (%s)",
                              len(gone), self.backend.name)

    def _lift(self, requests: Sequence[Request]) -> list[IPAddress]:
        """Release each request's claim and unblock the addresses nobody holds any more (those
        returned); an address another command still holds stays, with that command's time."""
        with self.claims.lock:
            self._ensure()
            addrs = list(dict.fromkeys(self.srcip(request) for request in requests))
            for request in requests:
                self.claims.release(request.command, self.srcip(request))
            still = self._blocks(addrs)
            if still:
                self._write(still)
            held = {block.addr for block in still}
            gone = [addr for addr in addrs if addr not in held]
            if gone:
                self._unwrite(gone)
        return gone

    def refresh(self, request: Request, state: State, timeout: float | None) -> None:
        addr = self.srcip(request)
        if self.is_protected(addr):
            return
        with self.claims.lock:
            self._ensure()
            self.claims.claim(request.command, addr, self._deadline(timeout))
            self._write(self._blocks([addr]))

    def active(self) -> set[str]:
        return {str(a) for a in self.backend.active()}

    def _take_live(self, live: Sequence[LiveEntry], notes: list[str]) -> None:
        """Make the claims of every command in ``live`` exactly its live entries."""
        now = self.context.clock.monotonic()
        held: dict[str, dict[IPAddress, float | None]] = {}
        for entry in live:
            held.setdefault(entry.request.command, {})
            addr = entry.request.target.srcip
            if addr is None:
                notes.append(f"firewall-drop: ledger entry {entry.request.order_id} has no srcip")
                continue
            if self.is_protected(addr):
                notes.append(f"firewall-drop: {addr} is protected now; not re-blocked")
                continue
            if entry.remaining is not None and entry.remaining <= 0:
                continue  # expired while we were down; the ledger runs its undo
            remaining = self._timeout(entry.remaining)
            held[entry.request.command][addr] = None if remaining is None else now + remaining
        for command, addrs in held.items():
            self.claims.replace(command, addrs)

    def _replace_from_claims(self) -> tuple[int, int]:
        now = self.context.clock.monotonic()
        union = self.claims.union(now)
        blocks = [
            Block(a, None if d is None else max(d - now, 1.0)) for a, d in union.items()
        ]
        present = set(self.backend.active())
        self.backend.replace_all(blocks)
        self._ready = True
        return len(set(union) - present), len(present - set(union))

    def reconcile(self, live: Sequence[LiveEntry]) -> ReconcileReport:
        """One replace: the structure re-created if purged, and the block sets made exactly the
        live entries with their remaining time (one transaction on nftables). Blocks that other
        commands sharing these sets hold in this process are kept."""
        notes: list[str] = []
        with self.claims.lock:
            self._take_live(live, notes)
            readded, orphans = self._replace_from_claims()
        if orphans:
            notes.append(f"firewall-drop: removed {orphans} block(s) the ledger does not know")
        return ReconcileReport(readded=readded, removed_orphans=orphans, notes=tuple(notes))

    def check_and_repair(self, live: Sequence[LiveEntry]) -> bool:
        """For the engine's periodic tick: if someone purged our table/sets/chains (e.g.
        ``nft flush ruleset`` by a config-management run), rebuild them and re-add every block
        held (``live`` plus what other commands on these sets hold). Returns True when a repair
        was needed. Cheap when intact (no element listing)."""
        if self.backend.intact():
            return False
        self.context.log.warning(
            "firewall-drop: %s was removed by someone else; restoring it",
            self.backend.describe(),
        )
        notes: list[str] = []
        with self.claims.lock:
            self._take_live(live, notes)
            self._replace_from_claims()
        for note in notes:
            self.context.log.info("%s", note)
        return True

    def teardown(self) -> None:
        """Remove everything firewall-drop put in the kernel (uninstall; tests)."""
        with self.claims.lock:
            self.backend.remove()
            self.claims.clear()
            self._ready = False
