"""Fallback backend where nftables is unavailable: ipset ``hash:ip`` sets with per-entry kernel
timeouts, matched by one iptables/ip6tables rule in a dedicated chain.

    ipset dfir_ar4 / dfir_ar6              hash:ip, family inet / inet6, timeout 0 (per entry)
    ipset dfir_ar_allow4 / dfir_ar_allow6  hash:net (white list, own addresses, gateway)
    chain DFIR_AR_SET (filter), jumped to first from INPUT and FORWARD:
        -m set --match-set dfir_ar_allow4 src -j RETURN
        -m set --match-set dfir_ar4 src -j DROP

Batches go through ``ipset restore`` (one process for any number of entries); a full replace
builds a scratch set and ``swap``s it in, so the live set changes in one step.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import ClassVar

from dfir_ar import procs
from dfir_ar.errors import ConfigError
from dfir_ar.netfilter import xtables
from dfir_ar.netfilter.base import Block, FirewallBackend, whole_seconds
from dfir_ar.validate import IPAddress, IPNetwork

# The kernel stores ipset timeouts in jiffies-based u32 milliseconds: 2147483 s (~24.8 days) is
# the largest accepted. Longer blocks are clamped; the ledger still runs the real undo.
MAX_TIMEOUT = 2_147_483
MAXELEM = 1_048_576
_SET = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,20}$")


class IpsetBackend(FirewallBackend):
    """Blocks as entries of ipset timeout sets (kernel expiry), one iptables rule per family."""

    name: ClassVar[str] = "ipset"
    kernel_expiry: ClassVar[bool] = True

    def __init__(
        self, allow: Sequence[IPNetwork], *, set_prefix: str = "dfir_ar", chain: str = "DFIR_AR_SET"
    ) -> None:
        super().__init__(allow)
        if not _SET.match(set_prefix):
            # ipset names are at most 31 characters; the longest we derive adds "_allow6_new".
            raise ConfigError(
                f"[responders.firewall-drop] set_prefix = {set_prefix!r}: use letters, digits, "
                "'_' or '-', starting with a letter, at most 21 characters"
            )
        self.prefix = set_prefix
        self.chain = xtables.check_name(chain, "chain")

    def describe(self) -> str:
        return f"ipset {self.block_set(4)}/{self.block_set(6)} + iptables chain {self.chain}"

    def block_set(self, family: int) -> str:
        return f"{self.prefix}{family}"

    def allow_set(self, family: int) -> str:
        return f"{self.prefix}_allow{family}"

    # -- pure script builders ----------------------------------------------------------------

    def _create_lines(self, family: int, *, name: str | None = None) -> list[str]:
        fam = "inet" if family == 4 else "inet6"
        return [
            f"create {name or self.block_set(family)} hash:ip family {fam} timeout 0 "
            f"maxelem {MAXELEM} -exist",
        ]

    def _allow_lines(self, family: int) -> list[str]:
        fam = "inet" if family == 4 else "inet6"
        name = self.allow_set(family)
        nets = self.allow4 if family == 4 else self.allow6
        lines = [f"create {name} hash:net family {fam} -exist", f"flush {name}"]
        lines += [f"add {name} {net} -exist" for net in nets]
        return lines

    def _rules(self, family: int) -> list[str]:
        return [
            f"-m set --match-set {self.allow_set(family)} src -j RETURN",
            f"-m set --match-set {self.block_set(family)} src -j DROP",
        ]

    @staticmethod
    def _entry(block: Block) -> str:
        if block.timeout is None:
            return f"{block.addr} timeout 0"
        return f"{block.addr} timeout {min(MAX_TIMEOUT, whole_seconds(block.timeout))}"

    # -- kernel I/O --------------------------------------------------------------------------

    def _ipset_restore(self, lines: Sequence[str]) -> None:
        text = "".join(f"{line}\n" for line in lines)
        procs.run(["ipset", "restore"], timeout=xtables.TOOL_DEADLINE, input=text.encode(),
                  check=True)

    def ensure(self) -> None:
        xtables.require("ipset", "iptables", "ip6tables")
        for family in (4, 6):
            self._ipset_restore([*self._create_lines(family), *self._allow_lines(family)])
            if xtables.chain_rules(family, self.chain) != self._rules(family):
                xtables.restore(family, xtables.restore_script(self.chain, self._rules(family)))
            xtables.ensure_jumps(family, self.chain)

    def add(self, blocks: Sequence[Block]) -> None:
        lines: list[str] = []
        for block in {b.addr: b for b in blocks}.values():
            # -exist: an entry already there gets the new timeout (the refresh semantics).
            lines.append(f"add {self.block_set(block.addr.version)} {self._entry(block)} -exist")
        if lines:
            self._ipset_restore(lines)

    def delete(self, addrs: Sequence[IPAddress]) -> None:
        lines = [f"del {self.block_set(a.version)} {a} -exist" for a in dict.fromkeys(addrs)]
        if not lines:
            return
        present = self._existing_sets()
        lines = [line for line in lines if line.split()[1] in present]
        if lines:
            self._ipset_restore(lines)

    def _existing_sets(self) -> set[str]:
        done = procs.run(["ipset", "list", "-n"], timeout=xtables.TOOL_DEADLINE, check=True)
        return set(done.stdout.decode("utf-8", "replace").split())

    def active(self) -> dict[IPAddress, float | None]:
        out: dict[IPAddress, float | None] = {}
        present = self._existing_sets()
        for family in (4, 6):
            name = self.block_set(family)
            if name not in present:
                continue
            done = procs.run(["ipset", "save", name], timeout=xtables.TOOL_DEADLINE, check=True)
            for line in done.stdout.decode("utf-8", "replace").splitlines():
                parts = line.split()
                if len(parts) < 3 or parts[0] != "add" or parts[1] != name:
                    continue
                try:
                    addr = ipaddress.ip_address(parts[2])
                except ValueError:
                    continue
                remaining: float | None = None
                if "timeout" in parts[3:]:
                    secs = int(parts[parts.index("timeout") + 1])
                    remaining = float(secs) if secs > 0 else None
                out[addr] = remaining
        return out

    def replace_all(self, blocks: Sequence[Block]) -> None:
        xtables.require("ipset", "iptables", "ip6tables")
        by_family: dict[int, list[Block]] = {4: [], 6: []}
        for block in {b.addr: b for b in blocks}.values():
            by_family[block.addr.version].append(block)
        for family in (4, 6):
            live, scratch = self.block_set(family), f"{self.block_set(family)}_new"
            lines = [*self._create_lines(family), *self._allow_lines(family)]
            lines += [*self._create_lines(family, name=scratch), f"flush {scratch}"]
            lines += [f"add {scratch} {self._entry(b)} -exist" for b in by_family[family]]
            lines += [f"swap {scratch} {live}", f"destroy {scratch}"]
            self._ipset_restore(lines)
            xtables.restore(family, xtables.restore_script(self.chain, self._rules(family)))
            xtables.ensure_jumps(family, self.chain)

    def intact(self) -> bool:
        present = self._existing_sets()
        for family in (4, 6):
            if self.block_set(family) not in present or self.allow_set(family) not in present:
                return False
            if xtables.chain_rules(family, self.chain) != self._rules(family):
                return False
            if not xtables.jumps_present(family, self.chain):
                return False
        return True

    def remove(self) -> None:
        for family in (4, 6):
            xtables.remove_chain(family, self.chain)
        present = self._existing_sets()
        for family in (4, 6):
            for name in (self.block_set(family), self.allow_set(family)):
                if name in present:
                    procs.run(["ipset", "destroy", name], timeout=xtables.TOOL_DEADLINE, check=True)
