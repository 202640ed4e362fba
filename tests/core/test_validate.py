"""Parse-don't-sanitize: hostile srcip/username values are refused, canonical forms come out."""

from __future__ import annotations

import ipaddress

import pytest

from dfir_ar.errors import InvalidAddress, InvalidUsername
from dfir_ar.validate import parse_ip, parse_network, parse_username

HOSTILE_IPS = [
    "1.2.3.4; id", "$(id)", "`id`", "127.1", "0x7f.1", "fe80::1%eth0", "1.2.3.4 ", " 1.2.3.4",
    "1.2.3.4\n", "1.2.3.04", "01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", "[2001:db8::1]",
    "2001:db8::1/64", "", "a" * 100, "1.2.3.4\x00", "::ffff:1.2.3.4; id", "-1.2.3.4", "1.2.3.4/32",
    "localhost", "１.２.３.４",
]


@pytest.mark.parametrize("value", HOSTILE_IPS)
def test_hostile_addresses_refused(value: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_ip(value)


@pytest.mark.parametrize("value", [None, 123, ["1.2.3.4"], b"1.2.3.4"])
def test_non_strings_refused(value: object) -> None:
    with pytest.raises(InvalidAddress):
        parse_ip(value)


def test_canonical_forms() -> None:
    assert parse_ip("198.51.100.6") == ipaddress.IPv4Address("198.51.100.6")
    assert parse_ip("::ffff:198.51.100.6") == ipaddress.IPv4Address("198.51.100.6")
    assert str(parse_ip("2001:DB8:0:0::7")) == "2001:db8::7"


@pytest.mark.parametrize(
    "value",
    ["root;id", "a b", "../etc", "a..b", "-rf", "$(id)", "`id`", "a/b", "", "x" * 65, "ü", "a\nb",
     "a|b", "a&b", "a'b", 'a"b', "*"],
)
def test_hostile_usernames_refused(value: str) -> None:
    with pytest.raises(InvalidUsername):
        parse_username(value)


@pytest.mark.parametrize("value", ["alice", "bob.smith", "svc_backup", "j-doe", "machine$", "a@corp"])
def test_usernames_accepted(value: str) -> None:
    assert parse_username(value) == value


def test_networks() -> None:
    assert parse_network("2001:db8:1::/48").prefixlen == 48
    assert parse_network("198.51.100.10").prefixlen == 32
    with pytest.raises(InvalidAddress):
        parse_network("198.51.100.1/24")  # host bits set: almost always a typo
