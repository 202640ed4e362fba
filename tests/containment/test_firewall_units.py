"""Pure parts of firewall-drop: allow-list collapsing, element parsing, option validation, and the
refusals that happen before any kernel call."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from dfir_ar.errors import ConfigError, InvalidArgument, PluginUnavailable, Refused
from dfir_ar.netfilter import Block, FirewallBackend, make_backend
from dfir_ar.netfilter.base import split_networks, whole_seconds
from dfir_ar.netfilter.nftables import _parse_elem
from dfir_ar.responder import Request, ResponderContext, Target
from dfir_ar.validate import IPAddress, parse_ip
from responders.firewall_drop import FirewallDrop


class RecordingBackend(FirewallBackend):
    """Stands in for the kernel only where the test is about the responder's own refusals; every
    kernel behaviour is tested against real nftables/ipset/iptables in namespaces."""

    name = "recording"
    kernel_expiry = True

    def __init__(self) -> None:
        super().__init__([])
        self.added: list[Block] = []

    def ensure(self) -> None: ...
    def add(self, blocks: object) -> None:
        assert isinstance(blocks, list)
        self.added += blocks
    def delete(self, addrs: object) -> None: ...
    def active(self) -> dict[IPAddress, float | None]:
        return {}
    def replace_all(self, blocks: object) -> None: ...
    def intact(self) -> bool:
        return True
    def remove(self) -> None: ...


def _ctx(tmp_path: Path, white: list[str], **options: object) -> ResponderContext:
    return ResponderContext(
        state_dir=tmp_path, white_list=[ipaddress.ip_network(n) for n in white],
        options=options, log=logging.getLogger("t"),
    )


def test_allow_list_is_collapsed_per_family() -> None:
    nets = [ipaddress.ip_network(n) for n in
            ("198.51.100.0/24", "198.51.100.5/32", "127.0.0.0/8", "2001:db8::/32", "2001:db8:1::1/128")]
    v4, v6 = split_networks(nets)
    assert [str(n) for n in v4] == ["127.0.0.0/8", "198.51.100.0/24"]
    assert [str(n) for n in v6] == ["2001:db8::/32"]


def test_whole_seconds_never_shortens() -> None:
    assert whole_seconds(0.2) == 1
    assert whole_seconds(2.0) == 2
    assert whole_seconds(2.01) == 3


def test_parse_nft_elements() -> None:
    assert _parse_elem("198.18.0.1") == (parse_ip("198.18.0.1"), None)
    assert _parse_elem({"elem": {"val": "2001:db8::1", "timeout": 10, "expires": 7}}) == (
        parse_ip("2001:db8::1"), 7.0)
    assert _parse_elem({"prefix": {"addr": "1.2.3.0", "len": 24}}) == (None, None)
    assert _parse_elem("not-an-address") == (None, None)


def test_protected_address_is_refused_before_any_kernel_call(tmp_path: Path) -> None:
    backend = RecordingBackend()
    fw = FirewallDrop(_ctx(tmp_path, ["203.0.113.0/24", "::1/128"]), backend=backend)
    with pytest.raises(Refused, match="protected"):
        fw.add(Request("firewall-drop", Target(srcip=parse_ip("203.0.113.9")), timeout=5))
    with pytest.raises(InvalidArgument, match="srcip"):
        fw.add(Request("firewall-drop", Target(username="bob")))
    fw.refresh(Request("firewall-drop", Target(srcip=parse_ip("::1"))), {}, 60)
    assert backend.added == []
    state = fw.add(Request("firewall-drop", Target(srcip=parse_ip("198.51.100.7")), timeout=0))
    assert backend.added == [Block(parse_ip("198.51.100.7"), None)], "timeout 0 means no expiry"
    assert state == {"backend": "recording", "addr": "198.51.100.7", "kernel_expiry": True}


def test_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        FirewallDrop(_ctx(tmp_path, [], backend="pf"), backend=RecordingBackend())
    with pytest.raises(ValidationError):
        FirewallDrop(_ctx(tmp_path, [], tabel="x"), backend=RecordingBackend())


def test_bad_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="table"):
        make_backend("nftables", [], table="dfir ar; flush ruleset")
    with pytest.raises(ConfigError, match="chain"):
        make_backend("iptables", [], iptables_chain="-j ACCEPT")
    with pytest.raises(PluginUnavailable, match="unknown firewall backend"):
        make_backend("pf", [])  # type: ignore[arg-type]
