"""What every packet-filter backend of firewall-drop provides, so the responder is one class and the
kernel mechanics (nftables sets, ipset, plain iptables rules) are swappable.

A backend blocks *source addresses*. It owns one dedicated place in the kernel (a table, a pair of
sets, a chain) and never touches anything else; an allow list checked before the block list makes
blocking a protected address impossible in the kernel, not only in Python.
"""

from __future__ import annotations

import ipaddress
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from dfir_ar.validate import IPAddress, IPNetwork


@dataclass(frozen=True, slots=True)
class Block:
    """One address to drop, for ``timeout`` seconds (None: until deleted)."""

    addr: IPAddress
    timeout: float | None = None


class FirewallBackend(ABC):
    """A kernel mechanism that drops packets from a set of source addresses."""

    name: ClassVar[str]
    kernel_expiry: ClassVar[bool]
    """True when the kernel removes a block at its timeout by itself (dfir-ar may be dead)."""

    def __init__(self, allow: Sequence[IPNetwork]) -> None:
        self.allow4, self.allow6 = split_networks(allow)

    @abstractmethod
    def ensure(self) -> None:
        """Create the dedicated table/sets/chains if missing and load the allow list (idempotent,
        keeps existing blocks)."""

    @abstractmethod
    def add(self, blocks: Sequence[Block]) -> None:
        """Block every address in one batch; an address already blocked gets the new timeout."""

    @abstractmethod
    def delete(self, addrs: Sequence[IPAddress]) -> None:
        """Unblock exactly these addresses; quietly skip the ones not blocked."""

    @abstractmethod
    def active(self) -> dict[IPAddress, float | None]:
        """Addresses blocked now, with the seconds each has left (None: no kernel expiry)."""

    @abstractmethod
    def replace_all(self, blocks: Sequence[Block]) -> None:
        """Re-create the structure and make the block list exactly ``blocks`` (atomic where the
        mechanism allows: nftables one transaction, ipset a swap, iptables one restore)."""

    @abstractmethod
    def intact(self) -> bool:
        """Cheap check that the structure is in place (someone may have flushed the ruleset)."""

    @abstractmethod
    def remove(self) -> None:
        """Tear down everything this backend created (uninstall, tests)."""

    def describe(self) -> str:
        """One line for logs and ``dfir-ar plugins show``."""
        return self.name


def split_networks(
    nets: Iterable[IPNetwork],
) -> tuple[list[ipaddress.IPv4Network], list[ipaddress.IPv6Network]]:
    """Collapse an allow list per family: nft interval sets refuse overlapping elements, and a
    shorter list is a shorter rule chain for the iptables backend."""
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    return list(ipaddress.collapse_addresses(v4)), list(ipaddress.collapse_addresses(v6))


def whole_seconds(timeout: float) -> int:
    """Kernel timeouts here are whole seconds; round up so a block never ends early."""
    return max(1, math.ceil(timeout))
