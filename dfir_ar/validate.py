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
# The common case, parsed without ipaddress's string parser: no leading zeros (ambiguous, octal
# to inet_aton). Anything else goes on to ipaddress's checks and messages.
_OCTET = r"(0|[1-9][0-9]{0,2})"
_PLAIN_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:@/=+-]{1,256}$")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _CachedText:
    """Remembers an address's text: ``str(ip)`` of one srcip runs several times per alert (dedup
    key, stored request, audit record, log lines) and ipaddress rebuilds it every time."""

    __slots__ = ()
    _text: str  # a slot of each concrete class

    def __str__(self) -> str:
        try:
            return self._text
        except AttributeError:
            text = super().__str__()
            self._text = text  # type: ignore[misc]  # the slot is declared by the subclass
            return text

    def __repr__(self) -> str:
        return f"{type(self).__bases__[1].__name__}({str(self)!r})"


class IPv4(_CachedText, ipaddress.IPv4Address):
    """An IPv4Address (equal, hashable and ordered like one) that caches its text."""

    __slots__ = ("_text",)


class IPv6(_CachedText, ipaddress.IPv6Address):
    """An IPv6Address (equal, hashable and ordered like one) that caches its text."""

    __slots__ = ("_text",)


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
    if ":" not in value:
        quad = _PLAIN_QUAD.fullmatch(value)
        if quad is not None:
            a, b, c, d = map(int, quad.groups())
            if (a | b | c | d) < 256:
                return IPv4((a << 24) | (b << 16) | (c << 8) | d)
        if not _DOTTED_QUAD.fullmatch(value):
            raise InvalidAddress(
                f"srcip {_short(value)} is not a dotted-quad IPv4 or an IPv6 address"
            )
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidAddress(f"srcip {_short(value)} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        return IPv6(int(addr)) if mapped is None else IPv4(int(mapped))
    return IPv4(int(addr))


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
