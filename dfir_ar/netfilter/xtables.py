"""Shared plumbing of the two iptables-based backends (ipset and plain iptables): running the
tools through argv, and the dedicated chain that INPUT and FORWARD jump to.

Both backends keep their rules in a chain of their own and add exactly one jump from INPUT and
from FORWARD to it, so a flush of our chain never touches the admin's rules, and removing dfir-ar
is deleting two jumps and one chain per family.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence

from dfir_ar import procs
from dfir_ar.errors import ConfigError, PluginUnavailable

TOOL_DEADLINE = 30.0
HOOKS = ("INPUT", "FORWARD")
_CHAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,27}$")

# xtables tools take a lock; ``-w`` waits for it instead of failing when another tool (fail2ban,
# docker, an admin) holds it.
_WAIT = ("-w", "10")


def check_name(value: str, what: str) -> str:
    if not _CHAIN.match(value):
        raise ConfigError(
            f"[responders.firewall-drop] {what} = {value!r}: use letters, digits, '_' or '-', "
            "starting with a letter, at most 28 characters"
        )
    return value


def tool(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"


def xt(family: int, *args: str, check: bool = True) -> procs.Completed:
    """Run iptables/ip6tables with ``args`` (filter table)."""
    return procs.run([tool(family), *_WAIT, *args], timeout=TOOL_DEADLINE, check=check)


def restore(family: int, text: str) -> None:
    """Apply an ``iptables-restore --noflush`` script: one atomic commit of the filter table."""
    argv = [f"{tool(family)}-restore", *_WAIT, "--noflush"]
    procs.run(argv, timeout=TOOL_DEADLINE, input=text.encode(), check=True)


def chain_exists(family: int, chain: str) -> bool:
    return xt(family, "-S", chain, check=False).returncode == 0


def chain_rules(family: int, chain: str) -> list[str]:
    """The ``-A CHAIN ...`` lines of ``iptables -S CHAIN`` (without the ``-N`` line)."""
    done = xt(family, "-S", chain, check=False)
    if done.returncode != 0:
        return []
    prefix = f"-A {chain} "
    return [
        line[len(prefix):]
        for line in done.stdout.decode("utf-8", "replace").splitlines()
        if line.startswith(prefix)
    ]


def jumps_present(family: int, chain: str) -> bool:
    return all(
        xt(family, "-C", hook, "-j", chain, check=False).returncode == 0 for hook in HOOKS
    )


def ensure_jumps(family: int, chain: str) -> None:
    """Jump to ``chain`` first thing in INPUT and FORWARD, exactly once each."""
    for hook in HOOKS:
        if xt(family, "-C", hook, "-j", chain, check=False).returncode != 0:
            xt(family, "-I", hook, "1", "-j", chain)


def remove_chain(family: int, chain: str) -> None:
    """Delete every jump to ``chain`` and the chain itself; quiet when already gone."""
    for hook in HOOKS:
        for _ in range(16):  # more than one jump only if someone copied ours; bounded anyway
            if xt(family, "-D", hook, "-j", chain, check=False).returncode != 0:
                break
    if chain_exists(family, chain):
        xt(family, "-F", chain)
        xt(family, "-X", chain)


def restore_script(chain: str, lines: Sequence[str]) -> str:
    """A filter-table restore script that (re)creates ``chain`` with exactly ``lines``.

    In ``--noflush`` mode, declaring a user chain with ``:CHAIN - [0:0]`` flushes it if it exists,
    so the chain content is replaced atomically with the commit.
    """
    body = "".join(f"-A {chain} {line}\n" for line in lines)
    return f"*filter\n:{chain} - [0:0]\n{body}COMMIT\n"


def append_script(chain: str, lines: Sequence[str]) -> str:
    body = "".join(f"-A {chain} {line}\n" for line in lines)
    return f"*filter\n{body}COMMIT\n"


def require(*names: str) -> None:
    """Raise PluginUnavailable naming the first missing tool."""
    for name in names:
        if shutil.which(name) is None:
            raise PluginUnavailable(
                f"{name} is not installed",
                hint="apt-get install iptables ipset (or use backend = \"nftables\")",
            )
