"""Test hosts in network namespaces: two namespaces joined by a veth pair, documentation
addresses only (198.51.100.0/24, 2001:db8::/32). Everything created is deleted on exit."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


def sh(*argv: str, check: bool = True, ns: str | None = None, timeout: float = 30) -> str:
    """Run argv (optionally inside netns ``ns``); no shell."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class NetPair:
    """``attacker`` namespace at a4/a6 and ``agent`` namespace at b4/b6, linked directly."""

    attacker: str
    agent: str
    attacker_if: str
    agent_if: str
    a4: str = "198.51.100.6"
    b4: str = "198.51.100.5"
    a6: str = "2001:db8:100::6"
    b6: str = "2001:db8:100::5"

    def in_agent(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        return sh(*argv, check=check, ns=self.agent, timeout=timeout)

    def in_attacker(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        return sh(*argv, check=check, ns=self.attacker, timeout=timeout)

    def ping_ok(self, dst: str | None = None, count: int = 1, wait: float = 1.0) -> bool:
        """One bounded ping from attacker to agent."""
        target = dst or self.b4
        done = subprocess.run(
            ["ip", "netns", "exec", self.attacker, "ping", "-n", "-c", str(count),
             "-W", str(wait), "-i", "0.2", target],
            capture_output=True, timeout=10 + count * (wait + 0.2), check=False,
        )
        return done.returncode == 0

    def reachable(self, dst: str | None = None, wait: float = 1.0) -> bool:
        """Up to three bounded pings, true at the first reply: for checks that traffic passes,
        where one packet lost or late on a loaded host is not the answer (a check that traffic
        is dropped keeps the single ping_ok: the block drops every one)."""
        return any(self.ping_ok(dst, wait=wait) for _ in range(3))

    def agent_argv(self, argv: Sequence[str]) -> list[str]:
        """Prefix ``argv`` to run it inside the agent namespace."""
        return ["ip", "netns", "exec", self.agent, *argv]


@contextmanager
def net_pair(prefix: str = "dfir") -> Iterator[NetPair]:
    """Create attacker/agent namespaces with a veth pair, IPv4 + IPv6, lo up. Always cleaned up."""
    tag = uuid.uuid4().hex[:6]
    pair = NetPair(
        attacker=f"{prefix}-att-{tag}",
        agent=f"{prefix}-agt-{tag}",
        attacker_if=f"va{tag}",
        agent_if=f"vb{tag}",
    )
    try:
        sh("ip", "netns", "add", pair.attacker)
        sh("ip", "netns", "add", pair.agent)
        sh("ip", "link", "add", pair.attacker_if, "type", "veth", "peer", "name", pair.agent_if)
        sh("ip", "link", "set", pair.attacker_if, "netns", pair.attacker)
        sh("ip", "link", "set", pair.agent_if, "netns", pair.agent)
        for ns, ifname, v4, v6 in (
            (pair.attacker, pair.attacker_if, pair.a4, pair.a6),
            (pair.agent, pair.agent_if, pair.b4, pair.b6),
        ):
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", ns=ns, check=False)
            sh("ip", "addr", "add", f"{v4}/24", "dev", ifname, ns=ns)
            sh("ip", "-6", "addr", "add", f"{v6}/64", "dev", ifname, "nodad", ns=ns)
            sh("ip", "link", "set", ifname, "up", ns=ns)
        yield pair
    finally:
        for ns in (pair.attacker, pair.agent):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
