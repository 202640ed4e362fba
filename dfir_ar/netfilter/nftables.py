"""The default firewall-drop backend: nftables hash sets with per-element kernel timeouts.

Layout (``nft list table inet dfir_ar``)::

    table inet dfir_ar {
        set allow4 { type ipv4_addr; flags interval; }   # white list, own addresses, gateway
        set allow6 { type ipv6_addr; flags interval; }
        set block4 { type ipv4_addr; flags timeout; }    # hash set: O(1) per add at 100k
        set block6 { type ipv6_addr; flags timeout; }
        chain input   { type filter hook input   priority -10; policy accept;
                        ip saddr @allow4 accept; ip6 saddr @allow6 accept
                        ip saddr @block4 counter drop; ip6 saddr @block6 counter drop }
        chain forward { ... the same, hooked on forward ... }
    }

Why this shape: every block is an element with its own kernel timeout, so it expires even if
dfir-ar is dead (OSSEC/Wazuh keep the undo in memory only). Block sets are plain hash sets because
``flags interval`` sets cost O(n) per update (1.7-2.1 s per add at 100k here). The allow sets are
checked first, so a protected address cannot be dropped by this table whatever is in the block
sets. Priority -10 runs before the usual filter chains (priority 0); ``accept`` here only ends this
table's evaluation, other tables still apply their own policy.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from dfir_ar.errors import ConfigError
from dfir_ar.netfilter.base import Block, FirewallBackend, whole_seconds
from dfir_ar.netfilter.libnft import LibNft, NftError
from dfir_ar.validate import IPAddress, IPNetwork

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
CHAINS = ("input", "forward")
# (set name, nft type, flags, payload protocol, verdict) in rule order: allow before block.
_SETS: tuple[tuple[str, str, str, str, str], ...] = (
    ("allow4", "ipv4_addr", "interval", "ip", "accept"),
    ("allow6", "ipv6_addr", "interval", "ip6", "accept"),
    ("block4", "ipv4_addr", "timeout", "ip", "drop"),
    ("block6", "ipv6_addr", "timeout", "ip6", "drop"),
)


def check_table_name(table: str) -> str:
    if not _NAME.match(table):
        raise ConfigError(
            f"[responders.firewall-drop] table = {table!r}: use letters, digits and '_' "
            "(starting with a letter, at most 32 characters)"
        )
    return table


class NftablesBackend(FirewallBackend):
    """Blocks as elements of nftables timeout sets, written through libnftables in-process."""

    name: ClassVar[str] = "nftables"
    kernel_expiry: ClassVar[bool] = True

    def __init__(
        self,
        allow: Sequence[IPNetwork],
        *,
        table: str = "dfir_ar",
        priority: int = -10,
        nft: LibNft | None = None,
    ) -> None:
        super().__init__(allow)
        self.table = check_table_name(table)
        self.priority = priority
        self.nft = nft or LibNft()
        self._updates_timeout: bool | None = None

    def describe(self) -> str:
        return f"nftables table inet {self.table} (libnftables, kernel timeouts)"

    # -- command builders (pure) -------------------------------------------------------------

    def _ref(self, **extra: Any) -> dict[str, Any]:
        return {"family": "inet", "table": self.table, **extra}

    def _structure(self) -> list[dict[str, Any]]:
        """Commands that (re)create table, sets, chains and rules and reload the allow sets.
        ``add`` of an existing table/set/chain is a no-op, so this keeps existing blocks."""
        cmds: list[dict[str, Any]] = [{"add": {"table": {"family": "inet", "name": self.table}}}]
        for set_name, set_type, flags, _proto, _verdict in _SETS:
            cmds.append(
                {"add": {"set": self._ref(name=set_name, type=set_type, flags=[flags])}}
            )
        for chain in CHAINS:
            cmds.append(
                {
                    "add": {
                        "chain": self._ref(
                            name=chain, type="filter", hook=chain, prio=self.priority,
                            policy="accept",
                        )
                    }
                }
            )
            cmds.append({"flush": {"chain": self._ref(name=chain)}})
            for set_name, _type, _flags, proto, verdict in _SETS:
                expr: list[dict[str, Any]] = [
                    {
                        "match": {
                            "op": "==",
                            "left": {"payload": {"protocol": proto, "field": "saddr"}},
                            "right": f"@{set_name}",
                        }
                    }
                ]
                if verdict == "drop":
                    expr.append({"counter": None})
                expr.append({verdict: None})
                cmds.append({"add": {"rule": self._ref(chain=chain, expr=expr)}})
        for set_name, nets in (("allow4", self.allow4), ("allow6", self.allow6)):
            cmds.append({"flush": {"set": self._ref(name=set_name)}})
            if nets:
                elems = [_net_elem(n) for n in nets]
                cmds.append({"add": {"element": self._ref(name=set_name, elem=elems)}})
        return cmds

    def _add_cmds(self, blocks: Sequence[Block]) -> list[dict[str, Any]]:
        """Where the kernel updates the timeout of an element that exists (probed once, see
        ``_kernel_updates_timeout``) a timed block is one plain ``add``. Elsewhere, and for blocks
        without timeout, it is add + delete + add: the first add makes the delete safe when the
        address is absent, the delete drops the old timeout, the last add sets the new one. The
        three run in one transaction, so no packet sees the gap."""
        if self._updates_timeout is None:
            self._updates_timeout = self._kernel_updates_timeout()
        fast = [b for b in blocks if b.timeout is not None] if self._updates_timeout else []
        slow = [b for b in blocks if b.timeout is None] if self._updates_timeout else list(blocks)
        cmds = self._triple_cmds(slow)
        by_set: dict[str, list[Any]] = {"block4": [], "block6": []}
        for block in fast:
            assert block.timeout is not None
            by_set["block4" if block.addr.version == 4 else "block6"].append(
                {"elem": {"val": str(block.addr), "timeout": whole_seconds(block.timeout)}}
            )
        for set_name, elems in by_set.items():
            if elems:
                cmds.append({"add": {"element": self._ref(name=set_name, elem=elems)}})
        return cmds

    def _kernel_updates_timeout(self) -> bool:
        """Does ``add element`` refresh the timeout of an element already present? (Linux >= 6.10
        does; older kernels keep the old one.) Probed on a scratch set no rule references."""
        probe = "probe_timeout"
        val = "198.18.0.0"  # benchmarking range; the scratch set drops nothing
        try:
            self.nft.run([
                {"add": {"table": {"family": "inet", "name": self.table}}},
                {"add": {"set": self._ref(name=probe, type="ipv4_addr", flags=["timeout"])}},
                {"flush": {"set": self._ref(name=probe)}},
                {"add": {"element": self._ref(name=probe, elem=[{"elem": {"val": val, "timeout": 100}}])}},
            ])
            self.nft.run([
                {"add": {"element": self._ref(name=probe, elem=[{"elem": {"val": val, "timeout": 200}}])}}
            ])
            listing = self.nft.run([{"list": {"set": self._ref(name=probe)}}])
        finally:
            with contextlib.suppress(NftError):
                self.nft.run([{"delete": {"set": self._ref(name=probe)}}])
        for item in listing.get("nftables", []):
            if isinstance(item, dict) and isinstance(item.get("set"), dict):
                for elem in item["set"].get("elem", []):
                    _addr, remaining = _parse_elem(elem)
                    return remaining is not None and remaining > 100
        return False

    def _triple_cmds(self, blocks: Sequence[Block]) -> list[dict[str, Any]]:
        per_set: dict[str, tuple[list[Any], list[Any], list[Any]]] = {
            "block4": ([], [], []),
            "block6": ([], [], []),
        }
        for block in blocks:
            set_name = "block4" if block.addr.version == 4 else "block6"
            plain, dels, timed = per_set[set_name]
            val = str(block.addr)
            plain.append(val)
            dels.append(val)
            if block.timeout is None:
                timed.append(val)
            else:
                timed.append({"elem": {"val": val, "timeout": whole_seconds(block.timeout)}})
        cmds: list[dict[str, Any]] = []
        for set_name, (plain, dels, timed) in per_set.items():
            if plain:
                cmds.append({"add": {"element": self._ref(name=set_name, elem=plain)}})
                cmds.append({"delete": {"element": self._ref(name=set_name, elem=dels)}})
                cmds.append({"add": {"element": self._ref(name=set_name, elem=timed)}})
        return cmds

    # -- kernel I/O --------------------------------------------------------------------------

    def ensure(self) -> None:
        self._run_structure(self._structure())

    def _run_structure(self, cmds: list[dict[str, Any]]) -> None:
        """Run a batch that (re)creates the layout; explain the one failure a user can fix: a
        table of this name whose sets were made by something else (``add set`` of an existing
        set with another type or flags is refused as "File exists")."""
        try:
            self.nft.run(cmds)
        except NftError as exc:
            conflict = self._layout_conflict()
            if conflict:
                raise NftError(
                    f"table inet {self.table} exists with a different layout ({conflict}); "
                    f"dfir-ar owns this table: remove it with `nft delete table inet {self.table}` "
                    "or set [responders.firewall-drop] table to another name"
                ) from exc
            raise

    def _layout_conflict(self) -> str:
        try:
            listing = self.nft.run(
                [{"list": {"table": {"family": "inet", "name": self.table}}}], terse=True
            )
        except NftError:
            return ""
        found = {
            item["set"].get("name"): item["set"]
            for item in listing.get("nftables", [])
            if isinstance(item, dict) and isinstance(item.get("set"), dict)
        }
        for set_name, set_type, flags, _p, _v in _SETS:
            have = found.get(set_name)
            if have is not None and (
                have.get("type") != set_type or list(have.get("flags", [])) != [flags]
            ):
                return (f"set {set_name} is {have.get('type')} flags {have.get('flags', [])}, "
                        f"expected {set_type} flags [{flags!r}]")
        return ""

    def add(self, blocks: Sequence[Block]) -> None:
        cmds = self._add_cmds(_dedup(blocks))
        if not cmds:
            return
        # A purged table makes this fail; FirewallDrop then rebuilds from what it holds.
        self.nft.run(cmds)

    def delete(self, addrs: Sequence[IPAddress]) -> None:
        by_set: dict[str, list[str]] = {"block4": [], "block6": []}
        for addr in dict.fromkeys(addrs):
            by_set["block4" if addr.version == 4 else "block6"].append(str(addr))
        cmds: list[dict[str, Any]] = []
        for set_name, vals in by_set.items():
            if vals:
                # add-then-delete: deleting an absent element fails the whole transaction.
                cmds.append({"add": {"element": self._ref(name=set_name, elem=vals)}})
                cmds.append({"delete": {"element": self._ref(name=set_name, elem=vals)}})
        if not cmds:
            return
        try:
            self.nft.run(cmds)
        except NftError:
            if self._table_exists() and self.intact():
                raise
            # No table or sets: nothing of ours is blocked, which is what delete wants.

    def active(self) -> dict[IPAddress, float | None]:
        out: dict[IPAddress, float | None] = {}
        items: list[Any] = []
        # One list command per run: libnftables 1.0.6 resolves only the first set of a batch
        # of several ``list set`` commands.
        for name in ("block4", "block6"):
            try:
                items += self.nft.run([{"list": {"set": self._ref(name=name)}}]).get("nftables", [])
            except NftError:
                if self._table_exists():
                    raise
                return out
        for item in items:
            nft_set = item.get("set") if isinstance(item, dict) else None
            if not isinstance(nft_set, dict):
                continue
            for elem in nft_set.get("elem", []):
                addr, remaining = _parse_elem(elem)
                if addr is not None:
                    out[addr] = remaining
        return out

    def replace_all(self, blocks: Sequence[Block]) -> None:
        cmds = self._structure()
        cmds += [{"flush": {"set": self._ref(name=name)}} for name in ("block4", "block6")]
        by_set: dict[str, list[Any]] = {"block4": [], "block6": []}
        for block in _dedup(blocks):
            val = str(block.addr)
            elem: Any = val
            if block.timeout is not None:
                elem = {"elem": {"val": val, "timeout": whole_seconds(block.timeout)}}
            by_set["block4" if block.addr.version == 4 else "block6"].append(elem)
        for set_name, elems in by_set.items():
            if elems:
                cmds.append({"add": {"element": self._ref(name=set_name, elem=elems)}})
        self._run_structure(cmds)

    def intact(self) -> bool:
        try:
            listing = self.nft.run([{"list": {"table": {"family": "inet", "name": self.table}}}],
                                   terse=True)
        except NftError:
            return False
        sets: dict[str, tuple[str, list[str]]] = {}
        chains: set[str] = set()
        rules: dict[str, list[str]] = {c: [] for c in CHAINS}
        for item in listing.get("nftables", []):
            if not isinstance(item, dict):
                continue
            if "set" in item:
                s = item["set"]
                sets[s.get("name", "")] = (s.get("type", ""), list(s.get("flags", [])))
            elif "chain" in item:
                c = item["chain"]
                if c.get("hook") == c.get("name") and c.get("policy") == "accept":
                    chains.add(c.get("name", ""))
            elif "rule" in item:
                r = item["rule"]
                refs = [
                    e["match"]["right"] for e in r.get("expr", [])
                    if isinstance(e, dict) and "match" in e and isinstance(e["match"].get("right"), str)
                ]
                rules.setdefault(r.get("chain", ""), []).extend(refs)
        for set_name, set_type, flags, _p, _v in _SETS:
            if sets.get(set_name, ("", []))[0] != set_type or flags not in sets[set_name][1]:
                return False
        expected = [f"@{s[0]}" for s in _SETS]
        return all(c in chains and rules.get(c) == expected for c in CHAINS)

    def remove(self) -> None:
        if self._table_exists():
            self.nft.run([{"delete": {"table": {"family": "inet", "name": self.table}}}])

    def _table_exists(self) -> bool:
        try:
            self.nft.run([{"list": {"table": {"family": "inet", "name": self.table}}}], terse=True)
        except NftError:
            return False
        return True


def _net_elem(net: IPNetwork) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _parse_elem(elem: Any) -> tuple[IPAddress | None, float | None]:
    """nft prints a bare string for an element without timeout, else an ``elem`` object."""
    remaining: float | None = None
    val: Any = elem
    if isinstance(elem, dict) and isinstance(elem.get("elem"), dict):
        inner = elem["elem"]
        val = inner.get("val")
        if isinstance(inner.get("expires"), int | float):
            remaining = float(inner["expires"])
        elif isinstance(inner.get("timeout"), int | float):
            remaining = float(inner["timeout"])
    if not isinstance(val, str):
        return None, None
    try:
        return ipaddress.ip_address(val), remaining
    except ValueError:
        return None, None


def _dedup(blocks: Sequence[Block]) -> list[Block]:
    """Last one wins: an address twice in a batch would make the transaction fail (EEXIST)."""
    return list({b.addr: b for b in blocks}.values())
