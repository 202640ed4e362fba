from __future__ import annotations

import ipaddress
import socket

import psutil
import pytest

from dfir_ar.clock import FakeClock
from dfir_ar.rails import (
    LOOPBACK,
    RateLimiter,
    WhiteList,
    active_cap_allows,
    default_gateways,
    host_protected_networks,
    parse_proc_ipv6_route,
    parse_proc_route,
)
from dfir_ar.validate import parse_ip


def test_white_list_v4_v6_cidr_and_hosts() -> None:
    wl = WhiteList(["198.51.100.10", "203.0.113.0/25", "2001:db8:1::/48", *LOOPBACK])
    for ip in ("198.51.100.10", "203.0.113.1", "203.0.113.127", "2001:db8:1:ffff::1", "127.0.0.1",
               "127.9.9.9", "::1"):
        assert wl.contains(parse_ip(ip)), ip
    for ip in ("198.51.100.11", "203.0.113.128", "2001:db8:2::1", "::2"):
        assert not wl.contains(parse_ip(ip)), ip
    assert str(wl.covering(parse_ip("203.0.113.5"))) == "203.0.113.0/25"


def test_ipv4_mapped_source_is_checked_as_ipv4() -> None:
    wl = WhiteList(["198.51.100.10"])
    assert wl.contains(parse_ip("::ffff:198.51.100.10"))


def test_large_white_list_matches_every_entry() -> None:
    nets = [ipaddress.ip_network(f"198.18.{i // 256}.{i % 256}") for i in range(5000)]
    wl = WhiteList(nets)
    assert all(wl.contains(n.network_address) for n in nets[::97])
    assert not wl.contains(parse_ip("198.18.200.1"))


def test_rate_limiter_token_bucket_with_injected_time() -> None:
    clock = FakeClock()
    rl = RateLimiter(per_minute=3)
    now = clock.monotonic()
    assert [rl.allow("block", now) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("other", now)  # per key
    assert rl.retry_after("block", now) == pytest.approx(20.0)
    clock.advance(19.9)
    assert not rl.allow("block", clock.monotonic())
    clock.advance(0.2)
    assert rl.allow("block", clock.monotonic())
    clock.advance(3600)
    assert [rl.allow("block", clock.monotonic()) for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_survives_time_going_back_and_prunes_keys() -> None:
    rl = RateLimiter(per_minute=1)
    assert rl.allow("a", 100.0)
    assert not rl.allow("a", 50.0)  # a clock step back grants nothing
    rl.MAX_KEYS = 10
    for i in range(50):
        rl.allow(f"k{i}", 1000.0 + i * 120)
    assert len(rl._buckets) <= 11


def test_active_cap() -> None:
    assert active_cap_allows(0, 1)
    assert not active_cap_allows(1, 1)
    assert not active_cap_allows(5, 1)


ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t016433C6\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t006433C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0
"""
IPV6_ROUTE = (
    "20010db8000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "20010db8000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n"
)


def test_proc_route_parsing() -> None:
    assert parse_proc_route(ROUTE) == [ipaddress.IPv4Address("198.51.100.1")]
    assert parse_proc_ipv6_route(IPV6_ROUTE) == [ipaddress.IPv6Address("2001:db8::1")]
    assert parse_proc_route("garbage\nnot a route line\n") == []


def test_host_protected_networks_cover_loopback_own_addresses_and_gateways() -> None:
    nets = host_protected_networks(extra=[parse_ip("203.0.113.99")])
    wl = WhiteList(nets)
    assert wl.contains(parse_ip("127.0.0.1")) and wl.contains(parse_ip("::1"))
    assert wl.contains(parse_ip("203.0.113.99"))
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET:
                assert wl.contains(parse_ip(a.address)), a.address
    for gw in default_gateways():
        assert wl.contains(gw)
    bare = host_protected_networks(own=False, gateways=False)
    assert bare == list(LOOPBACK)


def test_protected_networks_inside_a_namespace_with_a_gateway() -> None:
    """The real I/O path: own addresses and v4/v6 default gateways as the kernel reports them."""
    import subprocess
    import sys

    from tests.conftest import require_root, require_tool
    from tests.netns import net_pair

    require_root()
    require_tool("ip")
    with net_pair("in") as pair:
        pair.in_agent("ip", "route", "add", "default", "via", pair.a4)
        pair.in_agent("ip", "-6", "route", "add", "default", "via", pair.a6)
        code = (
            "from dfir_ar.rails import host_protected_networks;"
            "print(' '.join(str(n) for n in host_protected_networks()))"
        )
        out = pair.in_agent(sys.executable, "-c", code).split()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for net in ("127.0.0.0/8", "::1/128", f"{pair.b4}/32", f"{pair.b6}/128", f"{pair.a4}/32",
                f"{pair.a6}/128"):
        assert net in out, (net, out)
    assert f"{pair.b4}/32" not in done.stdout.split()  # the host outside sees its own, not these
