"""Last-resort backend: one iptables/ip6tables DROP rule per address, in a dedicated chain.

    chain DFIR_AR (filter), jumped to first from INPUT and FORWARD:
        -s 127.0.0.0/8 -j RETURN          one RETURN per allow-list network, always first
        -s 203.0.113.7/32 -j DROP         one rule per blocked address

This is what OSSEC's and Wazuh's firewall-drop do (but they insert straight into INPUT and
FORWARD). Packet cost grows with every rule, so it suits small counts only. There is no kernel
expiry: a block stays until dfir-ar deletes it, and the ledger's timeout scheduler is what runs
that undo (also after a restart, when it reconciles).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import ClassVar

from dfir_ar.errors import ExecutionError
from dfir_ar.netfilter import xtables
from dfir_ar.netfilter.base import Block, FirewallBackend
from dfir_ar.validate import IPAddress, IPNetwork


class IptablesBackend(FirewallBackend):
    """Per-address DROP rules in a chain of our own; the ledger does the undo."""

    name: ClassVar[str] = "iptables"
    kernel_expiry: ClassVar[bool] = False

    def __init__(self, allow: Sequence[IPNetwork], *, chain: str = "DFIR_AR") -> None:
        super().__init__(allow)
        self.chain = xtables.check_name(chain, "chain")

    def describe(self) -> str:
        return f"iptables/ip6tables chain {self.chain} (no kernel expiry; the ledger undoes)"

    def _allow_rules(self, family: int) -> list[str]:
        nets = self.allow4 if family == 4 else self.allow6
        return [f"-s {net} -j RETURN" for net in nets]

    @staticmethod
    def _drop_rule(addr: IPAddress) -> str:
        return f"-s {addr}/{addr.max_prefixlen} -j DROP"

    def _read(self, family: int) -> tuple[list[str], list[IPAddress]] | None:
        """(RETURN rules, blocked addresses) of our chain, or None if the chain is missing."""
        if not xtables.chain_exists(family, self.chain):
            return None
        returns: list[str] = []
        blocked: list[IPAddress] = []
        for rule in xtables.chain_rules(family, self.chain):
            parts = rule.split()
            if len(parts) == 4 and parts[0] == "-s" and parts[2] == "-j":
                if parts[3] == "RETURN":
                    returns.append(rule)
                elif parts[3] == "DROP":
                    net = ipaddress.ip_network(parts[1], strict=False)
                    if net.prefixlen == net.max_prefixlen:
                        blocked.append(net.network_address)
        return returns, blocked

    def ensure(self) -> None:
        xtables.require("iptables", "ip6tables")
        for family in (4, 6):
            state = self._read(family)
            if state is None or state[0] != self._allow_rules(family):
                kept = state[1] if state else []
                lines = self._allow_rules(family) + [self._drop_rule(a) for a in kept]
                xtables.restore(family, xtables.restore_script(self.chain, lines))
            xtables.ensure_jumps(family, self.chain)

    def add(self, blocks: Sequence[Block]) -> None:
        # The timeout is ignored on purpose: no kernel expiry here (see the module docstring).
        wanted: dict[int, list[IPAddress]] = {4: [], 6: []}
        for addr in dict.fromkeys(b.addr for b in blocks):
            wanted[addr.version].append(addr)
        for family, addrs in wanted.items():
            if not addrs:
                continue
            state = self._read(family)
            if state is None:
                # ensure() ran before the first add, so a missing chain means someone purged it;
                # the responder rebuilds it with every block it holds, not just these.
                raise ExecutionError(f"{xtables.tool(family)} chain {self.chain} is missing")
            present = set(state[1])
            new = [self._drop_rule(a) for a in addrs if a not in present]
            if new:
                xtables.restore(family, xtables.append_script(self.chain, new))

    def delete(self, addrs: Sequence[IPAddress]) -> None:
        for addr in dict.fromkeys(addrs):
            rule = self._drop_rule(addr).split()
            # Loop: an admin may have duplicated the rule; bounded so a failure cannot spin.
            for _ in range(16):
                done = xtables.xt(addr.version, "-D", self.chain, *rule, check=False)
                if done.returncode != 0:
                    break

    def active(self) -> dict[IPAddress, float | None]:
        out: dict[IPAddress, float | None] = {}
        for family in (4, 6):
            state = self._read(family)
            if state is not None:
                out.update(dict.fromkeys(state[1]))
        return out

    def replace_all(self, blocks: Sequence[Block]) -> None:
        xtables.require("iptables", "ip6tables")
        for family in (4, 6):
            addrs = dict.fromkeys(b.addr for b in blocks if b.addr.version == family)
            lines = self._allow_rules(family) + [self._drop_rule(a) for a in addrs]
            xtables.restore(family, xtables.restore_script(self.chain, lines))
            xtables.ensure_jumps(family, self.chain)

    def intact(self) -> bool:
        for family in (4, 6):
            state = self._read(family)
            if state is None or state[0] != self._allow_rules(family):
                return False
            if not xtables.jumps_present(family, self.chain):
                return False
        return True

    def remove(self) -> None:
        for family in (4, 6):
            xtables.remove_chain(family, self.chain)
