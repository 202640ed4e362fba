"""Safety rails: the white list, the per-command rate limit and the global cap on active responses.

The checks are pure (time is an argument). The one I/O function, :func:`host_protected_networks`,
reads the host's own addresses and default gateways; callers read it once at start and hand the
result to the pure :class:`WhiteList`, so decisions stay testable and fast.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

from dfir_ar.validate import IPAddress, IPNetwork, parse_network

log = logging.getLogger(__name__)

LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)


class WhiteList:
    """Networks that are never contained. ``contains`` costs one set lookup per distinct prefix
    length, not one comparison per entry, so a white list of thousands of hosts stays cheap."""

    def __init__(self, networks: Iterable[IPNetwork | str]) -> None:
        nets: list[IPNetwork] = []
        for net in networks:
            nets.append(parse_network(net) if isinstance(net, str) else net)
        self.networks: tuple[IPNetwork, ...] = tuple(dict.fromkeys(nets))
        self._v4 = _table(n for n in self.networks if n.version == 4)
        self._v6 = _table(n for n in self.networks if n.version == 6)

    def contains(self, ip: IPAddress) -> bool:
        value = int(ip)
        # A loop, not any(<generator>): this runs twice per alert (intake and executor).
        for mask, prefixes in self._v4 if ip.version == 4 else self._v6:  # noqa: SIM110
            if value & mask in prefixes:
                return True
        return False

    def covering(self, ip: IPAddress) -> IPNetwork | None:
        """The first entry that covers ``ip`` (for a refusal message)."""
        for net in self.networks:
            if ip.version == net.version and ip in net:
                return net
        return None

    def __len__(self) -> int:
        return len(self.networks)


def _table(networks: Iterable[IPNetwork]) -> tuple[tuple[int, frozenset[int]], ...]:
    by_mask: dict[int, set[int]] = {}
    for net in networks:
        by_mask.setdefault(int(net.netmask), set()).add(int(net.network_address))
    # Widest networks first: they are the likeliest hit (loopback, a site's /16).
    return tuple(
        (mask, frozenset(values))
        for mask, values in sorted(by_mask.items(), key=lambda kv: kv[0])
    )


class RateLimiter:
    """Token bucket per key: ``per_minute`` executions a minute, with bursts up to ``burst``
    (default: a full minute's worth). ``now`` is passed in (use a monotonic clock)."""

    MAX_KEYS = 10_000

    def __init__(self, per_minute: int, burst: int | None = None) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.capacity = float(burst if burst is not None else per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float) -> bool:
        tokens, last = self._buckets.get(key, (self.capacity, now))
        if now > last:
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            last = now
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, last)
            if len(self._buckets) > self.MAX_KEYS:
                self._prune(now)
            return True
        self._buckets[key] = (tokens, last)
        return False

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token again (0 if it has one now)."""
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + max(0.0, now - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        # A bucket that has refilled is indistinguishable from a fresh one: forget it.
        full = [
            k for k, (t, last) in self._buckets.items()
            if t + (now - last) * self.rate >= self.capacity
        ]
        for k in full:
            del self._buckets[k]


def active_cap_allows(current: int, cap: int) -> bool:
    """True when one more stateful response fits under the global cap."""
    return current < cap


# --- I/O: what this host must never block -------------------------------------------------------


def parse_proc_route(text: str) -> list[ipaddress.IPv4Address]:
    """Default gateways from /proc/net/route (little-endian hex, destination 00000000)."""
    gateways: list[ipaddress.IPv4Address] = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        dest, gateway, flags, mask = cols[1], cols[2], cols[3], cols[7]
        try:
            is_gw = int(flags, 16) & 0x2  # RTF_GATEWAY
            if dest != "00000000" or mask != "00000000" or not is_gw:
                continue
            gateways.append(ipaddress.IPv4Address(int(gateway, 16).to_bytes(4, "little")))
        except ValueError:
            continue
    return gateways


def parse_proc_ipv6_route(text: str) -> list[ipaddress.IPv6Address]:
    """Default gateways from /proc/net/ipv6_route (dest ::/0 with a next hop)."""
    gateways: list[ipaddress.IPv6Address] = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 10:
            continue
        dest, plen, nexthop = cols[0], cols[1], cols[4]
        try:
            if int(dest, 16) != 0 or int(plen, 16) != 0 or int(nexthop, 16) == 0:
                continue
            gateways.append(ipaddress.IPv6Address(bytes.fromhex(nexthop)))
        except ValueError:
            continue
    return gateways


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def default_gateways(proc: Path = Path("/proc/net")) -> list[IPAddress]:
    out: list[IPAddress] = []
    out.extend(parse_proc_route(_read(proc / "route")))
    out.extend(parse_proc_ipv6_route(_read(proc / "ipv6_route")))
    return out


def own_addresses() -> list[IPAddress]:
    """Every address configured on this host's interfaces (zone ids dropped)."""
    import psutil

    out: list[IPAddress] = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(addr.address.split("%", 1)[0])
            except ValueError:
                continue
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                out.append(ip.ipv4_mapped)
            else:
                out.append(ip)
    return out


def host_protected_networks(
    *, own: bool = True, gateways: bool = True, extra: Sequence[IPAddress] = ()
) -> list[IPNetwork]:
    """Loopback, plus this host's own addresses and default gateways (v4 and v6), plus ``extra``
    (e.g. the manager's address). Containing any of these would cut the host off or lock the
    responders out of their own machine."""
    found: list[IPAddress] = list(extra)
    if own:
        found.extend(own_addresses())
    if gateways:
        found.extend(default_gateways())
    nets: list[IPNetwork] = list(LOOPBACK)
    for ip in found:
        nets.append(ipaddress.ip_network(ip))
    return list(dict.fromkeys(nets))
