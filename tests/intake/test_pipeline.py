from __future__ import annotations

import ipaddress

import pytest

from dfir_ar.alert import Alert
from dfir_ar.clock import FakeClock
from dfir_ar.config.models import Location
from dfir_ar.errors import InvalidArgument
from dfir_ar.ids import id_time, is_id
from dfir_ar.pipeline import LEVEL_ZERO, Pipeline, parse_filename
from dfir_ar.rails import LOOPBACK

from .conftest import make_config

NOW = FakeClock().now()


def brute(**kw: object) -> Alert:
    base: dict[str, object] = dict(rule_id=5712, level=10, groups=("sshd",), agent_id="001",
                                   srcip="198.51.100.6", dstuser="alice")
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(make_config(), list(LOOPBACK))


def test_fires_with_validated_targets_and_binding_settings(pipeline: Pipeline) -> None:
    a = brute()
    block, deny = pipeline.decide(a, NOW)
    assert block.binding == 0 and block.refused is None and block.fires
    o = block.order
    assert o is not None and is_id(o.id) and id_time(o.id) == pytest.approx(NOW, abs=0.001)
    assert o.command == "block" and o.binding == 1
    assert o.target.srcip == ipaddress.ip_address("198.51.100.6")
    assert o.timeout == 600 and o.repeated_offenders == (30, 60)
    assert o.location is Location.LOCAL and o.agent_ids == ("001",) and o.alert is a
    assert deny.order is not None and deny.order.target.username == "alice"
    assert deny.order.location is Location.SERVER and deny.order.agent_ids == ("000",)
    assert deny.order.timeout == 60 and deny.order.id != o.id


def test_ipv4_mapped_srcip_is_normalised_and_fires(pipeline: Pipeline) -> None:
    (block, _) = pipeline.decide(brute(srcip="::ffff:198.51.100.6"), NOW)
    assert block.order is not None
    assert block.order.target.srcip == ipaddress.IPv4Address("198.51.100.6")


@pytest.mark.parametrize(
    ("srcip", "reason"),
    [
        ("198.51.100.10", "white-listed (198.51.100.10/32)"),
        ("2001:db8:1::7", "white-listed (2001:db8:1::/48)"),
        ("127.0.0.1", "white-listed (127.0.0.0/8)"),
        ("::ffff:127.0.0.1", "srcip 127.0.0.1 is white-listed"),
        ("1.2.3.4; id", "not a dotted-quad"),
        ("127.1", "not a dotted-quad"),
        ("fe80::1%eth0", "zone id"),
        ("0.0.0.0", "unspecified address"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
    ],
)
def test_white_list_and_bad_srcip_suppress_every_response(
    pipeline: Pipeline, srcip: str, reason: str
) -> None:
    decisions = pipeline.decide(brute(srcip=srcip), NOW)
    assert len(decisions) == 2
    for d in decisions:
        assert d.order is None and d.refused is not None and reason in d.refused, d.refused


def test_apply_white_list_false_waives_only_that_binding() -> None:
    cfg = make_config(active_response=[
        {"command": "snapshot", "rules_id": [5712], "apply_white_list": False},
        {"command": "block", "rules_id": [5712]},
    ])
    snap, block = Pipeline(cfg, list(LOOPBACK)).decide(brute(srcip="127.0.0.1"), NOW)
    assert snap.order is not None and snap.order.target.srcip == ipaddress.ip_address("127.0.0.1")
    assert block.order is None and "white-listed" in (block.refused or "")
    # An unparsable srcip does not stop a response that neither checks nor needs it.
    snap, block = Pipeline(cfg, list(LOOPBACK)).decide(brute(srcip="$(id)"), NOW)
    assert snap.order is not None and snap.order.target.srcip is None
    assert block.order is None


@pytest.mark.parametrize(
    ("kw", "refusal"),
    [
        ({"srcip": None}, "missing argument: the alert has no srcip"),
        ({"dstuser": None}, "missing argument: the alert has no user"),
        ({"dstuser": "-rf"}, "not a valid account name"),
        ({"dstuser": "a/../b"}, "not a valid account name"),
        ({"dstuser": "root\n"}, "not a valid account name"),
        ({"dstuser": "rооt"}, "not a valid account name"),
    ],
)
def test_missing_or_invalid_arguments_are_refused(
    pipeline: Pipeline, kw: dict[str, object], refusal: str
) -> None:
    refused = [d for d in pipeline.decide(brute(**kw), NOW) if d.refused]
    assert refused and all(d.order is None for d in refused)
    assert any(refusal in (d.refused or "") for d in refused), [d.refused for d in refused]


def test_srcuser_is_used_when_there_is_no_dstuser(pipeline: Pipeline) -> None:
    _, deny = pipeline.decide(brute(dstuser=None, srcuser="bob"), NOW)
    assert deny.order is not None and deny.order.target.username == "bob"


def test_level_zero_and_no_match(pipeline: Pipeline) -> None:
    assert pipeline.decide(brute(level=0), NOW) == [pipeline.decide(brute(level=0), NOW)[0]]
    (d,) = pipeline.decide(brute(level=0), NOW)
    assert d.binding is None and d.order is None and d.refused == LEVEL_ZERO
    assert pipeline.decide(brute(rule_id=1), NOW) == []


def test_locations() -> None:
    cfg = make_config(active_response=[
        {"command": "block", "rules_id": [5712], "location": "defined-agent", "agent_id": "002,003"},
        {"command": "block", "rules_id": [5712], "location": "all"},
        {"command": "block", "rules_id": [5712], "location": "local"},
    ])
    p = Pipeline(cfg, [])
    defined, every, local = (d.order for d in p.decide(brute(), NOW))
    assert defined is not None and defined.agent_ids == ("002", "003")
    assert every is not None and every.location is Location.ALL and every.agent_ids == ("all",)
    assert local is not None and local.agent_ids == ("001",)
    # A manager alert runs on the manager; an OSSEC alerts.log alert (no id) leaves it to dispatch.
    (_, _, loc) = (d.order for d in p.decide(brute(agent_id="000"), NOW))
    assert loc is not None and loc.agent_ids == ("000",)
    (_, _, ossec) = (d.order for d in p.decide(brute(agent_id="", agent_name="web01"), NOW))
    assert ossec is not None and ossec.agent_ids == ()
    (_, _, bad) = p.decide(brute(agent_id="001.>"), NOW)
    assert bad.order is None and "not a valid agent id" in (bad.refused or "")


def test_an_ossec_alert_acts_locally_only_on_the_agent_it_names() -> None:
    """alerts.log names the agent, not its id: a failed login on web01 must not disable the
    account or block the address on this host unless this host is web01."""
    from dfir_ar.pipeline import not_here

    p = Pipeline(make_config(active_response=[
        {"command": "block", "rules_id": [5712], "location": "local"},
    ]), [])
    [decision] = p.decide(brute(agent_id="", agent_name="web01"), NOW)
    assert decision.order is not None
    assert not_here(decision.order, "000", "web01") is None
    reason = not_here(decision.order, "000", "manager")
    assert reason is not None and "'web01'" in reason and "global.agent_name" in reason
    assert not_here(decision.order, "000", "") is not None  # no name here: never a match
    [manager] = p.decide(brute(agent_id="000", agent_name="manager"), NOW)
    assert manager.order is not None and not_here(manager.order, "000", "other") is None


def test_timeout_dropped_when_command_does_not_allow_it() -> None:
    cfg = make_config(active_response=[{"command": "snapshot", "rules_id": [5712], "timeout": 60}])
    (d,) = Pipeline(cfg, []).decide(brute(), NOW)
    assert d.order is not None and d.order.timeout is None


def test_filename_argument() -> None:
    cfg = make_config(
        command=[{"name": "quarantine", "executable": "q", "expect": ["filename"]}],
        active_response=[{"command": "quarantine", "rules_id": [550]}],
    )
    p = Pipeline(cfg, [])
    (d,) = p.decide(brute(rule_id=550, filename="/etc/passwd"), NOW)
    assert d.order is not None and d.order.target.filename == "/etc/passwd"
    for bad in ("etc/passwd", "/etc/../shadow", "/tmp/x\n/etc/y"):
        (d,) = p.decide(brute(rule_id=550, filename=bad), NOW)
        assert d.order is None and d.refused
    with pytest.raises(InvalidArgument):
        parse_filename("/a\x00b")
