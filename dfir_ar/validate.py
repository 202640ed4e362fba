"""Parse, never sanitize: every attacker-controllable value passes through here or is refused.

History this guards against: fail2ban CVE-2012-5642 / CVE-2021-32749, OSSEC CVE-2014-5284 /
CVE-2015-3222, Wazuh's `!../../bin/ls` API traversal. A value either parses into a canonical form
or raises a RefusedInput subclass; nothing is ever "cleaned up and run".
"""

from __future__ import annotations

import ipaddress
import re
from typing import TypeAlias

from dfir_ar.errors import InvalidAddress, InvalidArgument, InvalidUsername

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_FIELD = 256
# Patterns are applied with fullmatch: with .match, "$" also matches before a trailing newline,
# so "root\n" passed as a username (a line-injection into hosts.deny or a log).
# POSIX portable user names plus the '@' and '.' seen in directory-backed accounts.
# No leading '-' (would read as an option), no '..', no '/', no whitespace, no shell metacharacters.
_USERNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.@-]{0,63}\$?$")
_DOTTED_QUAD = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:@/=+-]{1,256}$")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_ip(value: object) -> IPAddress:
    """Return the canonical address for ``value`` or raise InvalidAddress.

    Refused: anything that is not a str, shorthand IPv4 (``127.1``), leading zeros, zone ids
    (``fe80::1%eth0``), surrounding brackets or whitespace. IPv4-mapped IPv6 (``::ffff:1.2.3.4``)
    is normalised to the IPv4 address, because that is the address packets really come from.
    """
    if not isinstance(value, str):
        raise InvalidAddress(f"srcip {_short(value)} is not a string")
    if not value or len(value) > 64:
        raise InvalidAddress(f"srcip {_short(value)} is empty or too long")
    if "%" in value:
        raise InvalidAddress(f"srcip {_short(value)} has a zone id; refused")
    if ":" not in value and not _DOTTED_QUAD.fullmatch(value):
        raise InvalidAddress(f"srcip {_short(value)} is not a dotted-quad IPv4 or an IPv6 address")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidAddress(f"srcip {_short(value)} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_network(value: str) -> IPNetwork:
    """Parse a white-list entry: an address or a CIDR block (host bits must be zero)."""
    try:
        if "/" in value:
            return ipaddress.ip_network(value, strict=True)
        return ipaddress.ip_network(parse_ip(value))
    except (ValueError, InvalidAddress):
        raise InvalidAddress(
            f"{value!r} is not an IP address or a CIDR block with zero host bits"
        ) from None


def parse_username(value: object) -> str:
    """Return ``value`` if it is a plausible account name, else raise InvalidUsername."""
    if not isinstance(value, str):
        raise InvalidUsername(f"username {_short(value)} is not a string")
    if not _USERNAME.fullmatch(value) or ".." in value:
        raise InvalidUsername(
            f"username {_short(value)} is not a valid account name "
            "(letters, digits, '_', '.', '@', '-'; no leading '-', no '..')"
        )
    return value


def parse_token(value: object, what: str) -> str:
    """Identifiers that only get logged or passed as one argv element (alert id, agent id)."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise InvalidArgument(f"{what} {_short(value)} is not a valid identifier")
    return value


def is_ip_key(value: str) -> bool:
    """True when a ledger key is an address (used by the rails to re-check before acting)."""
    try:
        parse_ip(value)
    except InvalidAddress:
        return False
    return True
