"""Packet-filter backends for firewall-drop, and the choice between them.

``auto`` prefers nftables (libnftables in-process, timeout sets), then ipset + iptables (timeout
sets, one rule), then plain iptables rules (no kernel expiry). A configured backend that cannot
work here is an error that says why, never a silent fallback.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Literal

from dfir_ar.errors import DfirArError, PluginUnavailable
from dfir_ar.netfilter.base import Block, FirewallBackend
from dfir_ar.validate import IPNetwork

BackendName = Literal["auto", "nftables", "ipset", "iptables"]

__all__ = ["BackendName", "Block", "FirewallBackend", "make_backend"]


def make_backend(
    name: BackendName,
    allow: Sequence[IPNetwork],
    *,
    table: str = "dfir_ar",
    priority: int = -10,
    set_prefix: str = "dfir_ar",
    ipset_chain: str = "DFIR_AR_SET",
    iptables_chain: str = "DFIR_AR",
) -> FirewallBackend:
    """Build the configured backend, or for ``auto`` the first one that works on this host."""
    tried: list[str] = []
    order: Sequence[str] = ("nftables", "ipset", "iptables") if name == "auto" else (name,)
    for candidate in order:
        try:
            return _build(candidate, allow, table=table, priority=priority,
                          set_prefix=set_prefix, ipset_chain=ipset_chain,
                          iptables_chain=iptables_chain)
        except DfirArError as exc:
            if name != "auto":
                raise
            tried.append(f"{candidate}: {exc}")
    raise PluginUnavailable(
        "no firewall backend works here (" + "; ".join(tried) + ")",
        hint="apt-get install nftables (or ipset and iptables), and run as root",
    )


def _build(
    name: str,
    allow: Sequence[IPNetwork],
    *,
    table: str,
    priority: int,
    set_prefix: str,
    ipset_chain: str,
    iptables_chain: str,
) -> FirewallBackend:
    if name == "nftables":
        from dfir_ar.netfilter.libnft import LibNft
        from dfir_ar.netfilter.nftables import NftablesBackend, check_table_name

        check_table_name(table)
        nft = LibNft()
        # A probe the kernel must answer: without CAP_NET_ADMIN or nf_tables, this fails here
        # rather than at the first block.
        nft.run([{"list": {"tables": {"family": "inet"}}}])
        return NftablesBackend(allow, table=table, priority=priority, nft=nft)
    if name == "ipset":
        from dfir_ar.netfilter.ipset import IpsetBackend
        from dfir_ar.netfilter.xtables import require

        require("ipset", "iptables", "ip6tables")
        return IpsetBackend(allow, set_prefix=set_prefix, chain=ipset_chain)
    if name == "iptables":
        from dfir_ar.netfilter.iptables import IptablesBackend
        from dfir_ar.netfilter.xtables import require

        require("iptables", "ip6tables")
        return IptablesBackend(allow, chain=iptables_chain)
    raise PluginUnavailable(f"unknown firewall backend {name!r}",
                            hint='use "auto", "nftables", "ipset" or "iptables"')


def tools_present() -> dict[str, bool]:
    """Which backends' tools are installed (for ``check_compatible`` and ``plugins show``)."""
    from dfir_ar.netfilter.libnft import available

    return {
        "nftables": available(),
        "ipset": shutil.which("ipset") is not None and shutil.which("iptables") is not None,
        "iptables": shutil.which("iptables") is not None,
    }
