from __future__ import annotations

import json
import sys
from dataclasses import FrozenInstanceError

import orjson
import pytest

from dfir_ar.alert import Alert, new_alert
from dfir_ar.errors import RefusedInput
from dfir_ar.parsers import (
    MalformedAlert,
    NotUtf8,
    OssecBlockParser,
    OversizedAlert,
    UnknownFormat,
    alert_from_wazuh,
    detect_format,
    excerpt,
    parse_json_alert,
    parse_ossec_text,
    parse_plain_json,
    parse_wazuh_line,
)
from dfir_ar.rawalert import RawAlert
from dfir_ar.sources.base import Rejected
from dfir_ar.sources.reader import RecordReader

from .conftest import EXAMPLES, wazuh_line


def test_wazuh_sample_file_parses_completely() -> None:
    lines = (EXAMPLES / "wazuh-ssh-bruteforce.json").read_bytes().splitlines()
    alerts = [parse_wazuh_line(line) for line in lines]
    assert [a.rule_id for a in alerts].count(5712) == 2
    first = alerts[0]
    assert first.rule_id == 5716 and first.level == 5
    assert first.groups == ("syslog", "sshd", "authentication_failed")
    assert first.group_string == "syslog,sshd,authentication_failed,"
    assert first.agent_id == "001" and first.agent_name == "web01"
    assert first.srcip == "198.51.100.6" and first.dstuser == "root"
    assert first.location == "/var/log/auth.log"
    assert first.timestamp == "2026-11-22T08:00:00.000+0000"
    assert "Failed password" in first.full_log
    # The raw alert is kept whole for Wazuh-protocol scripts, unknown fields included.
    assert first.raw["rule"]["mitre"]["technique"] == ["Brute Force"]
    assert first.to_wazuh() == json.loads(lines[0])


def test_ossec_sample_file_parses_to_the_same_alerts_as_wazuh() -> None:
    parsed = parse_ossec_text((EXAMPLES / "ossec-ssh-bruteforce.log").read_bytes())
    wazuh = [parse_wazuh_line(x) for x in (EXAMPLES / "wazuh-ssh-bruteforce.json").read_bytes().splitlines()]
    assert len(parsed) == len(wazuh) == 11
    for p, w in zip(parsed, wazuh, strict=True):
        assert isinstance(p.item, Alert), p.item
        a = p.item
        assert (a.rule_id, a.level, a.groups, a.srcip, a.id) == (w.rule_id, w.level, w.groups, w.srcip, w.id)
        assert a.agent_name == "web01" and a.agent_ip == "198.51.100.5"
        assert a.agent_id == ""  # alerts.log names the agent, not its id
        assert a.full_log == w.full_log
    assert parsed[0].item.dstuser == "root"  # type: ignore[union-attr]
    assert parsed[0].item.description == "sshd: authentication failed."  # type: ignore[union-attr]


def test_ossec_manager_alert_and_missing_blank_line() -> None:
    text = (
        b"** Alert 1461258591.68247: mail  - syslog,sshd,authentication_failures,\n"
        b"2016 Apr 21 13:09:51 manager->/var/log/secure\n"
        b"Rule: 5712 (level 10) -> 'SSHD brute force trying to get access to the system.'\n"
        b"Src IP: 198.51.100.6\n"
        b"Apr 21 13:09:49 manager sshd[1]: Failed password\n"
        b"** Alert 1461258592.1: - syslog,\n"
        b"2016 Apr 21 13:09:52 manager->/var/log/secure\n"
        b"Rule: 1002 (level 2) -> 'Unknown problem'\n"
        b"something\n"
    )
    parsed = parse_ossec_text(text)
    assert [type(p.item) for p in parsed] == [Alert, Alert]
    a = parsed[0].item
    assert isinstance(a, Alert)
    assert a.agent_id == "000" and a.agent_name == "manager" and a.srcip == "198.51.100.6"
    assert a.id == "1461258591.68247" and a.timestamp == "2016 Apr 21 13:09:51"
    # The first block ends just before the next header (its cursor must not skip the header).
    assert parsed[0].end == text.index(b"** Alert 1461258592")


def test_an_ossec_log_line_that_looks_like_a_field_is_not_one() -> None:
    """A monitored log whose line starts with attacker text must not choose the address: the
    block's last line is the logged text, never a field."""
    text = (
        b"** Alert 1461258593.5: - app,\n"
        b"2016 Apr 21 13:09:53 (web01) 198.51.100.5->/var/log/app.log\n"
        b"Rule: 100100 (level 7) -> 'App error'\n"
        b"Src IP: 203.0.113.250\n"
    )
    (p,) = parse_ossec_text(text)
    assert isinstance(p.item, Alert)
    assert p.item.srcip is None and p.item.full_log == "Src IP: 203.0.113.250"


def test_wazuh_alerts_log_block() -> None:
    """Wazuh 4 still writes alerts.log in the OSSEC layout, with 'any' for an unknown address
    and decoded fields after the log line."""
    text = (
        b"** Alert 1614854589.1063: - pam,syslog,authentication_success,pci_dss_10.2.5,\n"
        b"2021 Mar 04 10:03:09 (ubuntu-agent) any->/var/log/auth.log\n"
        b"Rule: 5501 (level 3) -> 'PAM: Login session opened.'\n"
        b"User: root\n"
        b"Mar  4 10:03:08 ubuntu-agent sudo: pam_unix(sudo:session): session opened for user root\n"
        b"uid: 0\n\n"
    )
    (p,) = parse_ossec_text(text)
    a = p.item
    assert isinstance(a, Alert)
    assert (a.rule_id, a.level, a.agent_name, a.agent_ip, a.dstuser) == (
        5501, 3, "ubuntu-agent", None, "root")
    assert a.groups[-1] == "pci_dss_10.2.5" and a.full_log.endswith("uid: 0")


def test_ossec_parser_refuses_stray_text_and_oversized_blocks() -> None:
    p = OssecBlockParser(max_bytes=200)
    out = p.feed(b"stray\n", 6)
    assert len(out) == 1 and isinstance(out[0].item, MalformedAlert)
    assert p.feed(b"** Alert 1.2: - a,\n", 25) == []
    assert p.feed(b"x" * 300 + b"\n", 326) == []
    (done,) = p.feed(b"\n", 327)
    assert isinstance(done.item, OversizedAlert) and done.end == 327


def test_plain_json() -> None:
    a = parse_plain_json(b'{"rule_id": "5712", "level": 10, "groups": "syslog,sshd,", '
                         b'"srcip": "198.51.100.6", "user": "alice", "agent_id": "002"}')
    got = (a.rule_id, a.level, a.groups, a.dstuser, a.agent_id)
    assert got == (5712, 10, ("syslog", "sshd"), "alice", "002")
    assert a.raw["rule"]["id"] == "5712" and a.raw["data"]["srcip"] == "198.51.100.6"
    with pytest.raises(MalformedAlert, match=r'unknown field .src_ip.*did you mean "srcip"'):
        parse_plain_json(b'{"rule_id": 1, "level": 3, "src_ip": "198.51.100.6"}')
    with pytest.raises(MalformedAlert, match="needs rule_id and level"):
        parse_plain_json(b'{"rule_id": 1}')
    with pytest.raises(MalformedAlert, match="disagree"):
        parse_plain_json(b'{"rule_id": 1, "level": 3, "user": "a", "username": "b"}')


def test_auto_json_picks_the_shape() -> None:
    assert parse_json_alert(wazuh_line()).agent_id == "001"
    assert parse_json_alert(b'{"rule_id": 5, "level": 3}').rule_id == 5
    with pytest.raises(MalformedAlert, match="neither a rule object"):
        parse_json_alert(b'{"x": 1}')


_GOOD = b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": "198.51.100.6"}'


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"{not json", MalformedAlert, "not valid JSON"),
        (b"[" * 30_000 + b"]" * 30_000, MalformedAlert, "nested too deeply"),
        (b'{"rule": {"id": "5712", "level": 10}, "x": "\xff"}', NotUtf8, "byte 44 is not UTF-8"),
        (b'{"rule": {"id": "5712", "level": 10}, "pad": "' + b"A" * 270_000 + b'"}', OversizedAlert,
         "limit is 262144"),
        (b'{"rule": {"id": 5712.0, "level": 10}}', MalformedAlert, "rule.id: expected a rule number"),
        (b'{"rule": {"id": "\xef\xbc\x95712", "level": 10}}', MalformedAlert, "not a rule number"),
        (b'{"rule": {"id": "5712", "level": "10"}}', MalformedAlert, "rule.level: expected an integer"),
        (b'{"rule": {"id": "5712", "level": true}}', MalformedAlert, "rule.level"),
        (b'{"rule": {"id": "5712", "level": 21}}', MalformedAlert, "outside 0..20"),
        (b'{"rule": {"id": "5712", "level": 10, "groups": ["a,b"]}}', MalformedAlert, "not a group name"),
        (b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": 5}}', MalformedAlert,
         "data.srcip: expected a string"),
        (b'{"rule": {"id": "5712", "level": 10}, "agent": {"id": ""}}', MalformedAlert, "agent.id"),
        (b'{"rule": {"id": "5712", "level": 10}, "data": []}', MalformedAlert, "data: expected an object"),
        (b"[1]", MalformedAlert, "alert: expected a JSON object"),
        (b'{"rule": {"id": "9' + b"9" * 5000 + b'", "level": 1}}', MalformedAlert, "not a rule number"),
        # What msgspec's typed decoding alone would let through (it skips fields it does not
        # read) is refused as before, with the same message.
        (_GOOD + b', "x": "\xff"}', NotUtf8, r"byte 79 is not UTF-8 \(0xff\)"),
        (_GOOD + b', "\xc0\xaf": 1}', NotUtf8, r"\(0xc0\)"),  # overlong, in a key
        (_GOOD + b', "x": "\xed\xa0\x80"}', NotUtf8, r"\(0xed\)"),  # an encoded surrogate
        (_GOOD + b', "x": [1,,2]}', MalformedAlert, "not valid JSON"),
        (_GOOD + b', "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", MalformedAlert, "nested too deeply"),
        (_GOOD + b', "x": ' + b'{"a": ' * 1100 + b"1" + b"}" * 1101, MalformedAlert, "nested too deeply"),
        (_GOOD + b', "x": NaN}', MalformedAlert, "not valid JSON"),
        (_GOOD + b', "x": 1e999}', MalformedAlert, "number is infinity"),
        (_GOOD + b', "x": [-1E+400]}', MalformedAlert, "number is infinity"),
        (_GOOD + b', "x": ' + b"9" * 400 + b"}", MalformedAlert, "number is infinity"),
        (_GOOD + b', "x": "\\ud800"}', MalformedAlert, "not valid JSON"),  # a lone surrogate
        (b"\xef\xbb\xbf" + _GOOD + b"}", MalformedAlert, "not valid JSON"),  # a BOM
        (_GOOD + b"} trailing", MalformedAlert, "not valid JSON"),
        (_GOOD + b"}{}", MalformedAlert, "not valid JSON"),
        (b'{"rule": {"id": "5712", "level": ' + b"1" * 30 + b"}}", MalformedAlert, "rule.level"),
        (b'{"rule": {"id": 18446744073709551616, "level": 1}}', MalformedAlert, "rule.id"),
        (b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": "a"}, "data": []}', MalformedAlert,
         "data: expected an object"),  # duplicate keys: the last one counts
    ],
)
def test_bad_wazuh_input_is_refused_with_a_reason(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        parse_wazuh_line(data)
    assert isinstance(info.value, RefusedInput)


def test_nesting_msgspec_would_follow_is_refused_at_a_raised_recursion_limit() -> None:
    """With the limit raised, msgspec's decoding follows 1,100 levels; orjson (which decodes the
    raw alert later) refuses past 1,024, so the line is refused, as it always was."""
    line = _GOOD + b', "x": ' + b"[" * 1100 + b"]" * 1100 + b"}"
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        with pytest.raises(MalformedAlert, match="nested too deeply"):
            parse_wazuh_line(line)
        with pytest.raises(MalformedAlert, match="nested too deeply"):
            parse_wazuh_line(_GOOD + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 1 << 20)
        with pytest.raises(MalformedAlert, match="nested deeper than 64 levels"):
            parse_wazuh_line(_GOOD + b', "x": ' + b"[" * 900 + b"]" * 900 + b"}")
    finally:
        sys.setrecursionlimit(old)


def test_an_alert_nested_deeper_than_what_is_logged_is_refused_at_intake() -> None:
    """Every record of an execution re-encodes the alert; one nested past the encoder (orjson:
    255 levels) once left its intent half-done and the address never contained."""
    from dfir_ar import codec
    from dfir_ar.parsers import MAX_DEPTH, parse_json_alert

    deepest = _GOOD + b', "x": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    alert = parse_wazuh_line(deepest)
    assert codec.loads(codec.dumpb(alert.raw.decoded())) == codec.loads(deepest)  # type: ignore[attr-defined]
    for line in (
        _GOOD + b', "x": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}",
        _GOOD + b', "x": ' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}",
    ):
        for parse in (parse_wazuh_line, parse_json_alert):
            with pytest.raises(MalformedAlert, match=f"nested deeper than {MAX_DEPTH} levels"):
                parse(line)
    # Brackets inside strings are not nesting.
    assert parse_wazuh_line(_GOOD + b', "full_log": "' + b"[" * 500 + b'"}').srcip


@pytest.mark.parametrize("value", [r'"a\nb"', r'"1700000000.1\r\nX-Injected: yes"', r'"\u00e9t\u00e9"',
                                   '"-rf"', '""', '"' + "9" * 129 + '"', "12", "[]"])
def test_an_alert_id_that_is_not_a_plain_token_is_refused(value: str) -> None:
    from dfir_ar.parsers import parse_json_alert, parse_plain_json

    line = _GOOD + b', "id": ' + value.encode() + b"}"
    with pytest.raises(MalformedAlert, match=r"is not an alert id|expected a string"):
        parse_wazuh_line(line)
    plain = b'{"rule_id": 5712, "level": 10, "srcip": "203.0.113.5", "id": ' + value.encode() + b"}"
    with pytest.raises(MalformedAlert, match="is not an alert id"):
        parse_plain_json(plain)
    with pytest.raises(MalformedAlert):
        parse_json_alert(plain)
    assert parse_wazuh_line(_GOOD + b', "id": "1795334410.12345"}').id == "1795334410.12345"


@pytest.mark.parametrize(
    "line",
    [
        # duplicate keys: the last wins, in the fields read and in the raw alert alike
        _GOOD + b', "data": {"srcip": "203.0.113.9"}}',
        b'{"r\\u0075le": {"id": "5712", "level": 10}, "data": {"\\u0073rcip": "198.51.100.6"}}',
        _GOOD + b', "x": [1e308, -0, 0.5e-999, ' + b"9" * 300 + b"]}",  # big, not too big
        _GOOD + b', "x": "\\u00e9\\n"}',
        b'{"rule": {"id": 5712, "level": 0, "groups": "syslog,sshd,"}}',  # groups as a string
        b'{"rule": {"id": "5712", "level": 1}, "data": {"filename": "/a"}, "syscheck": 5}',
        b'{"rule": {"id": "5712", "level": 1}, "syscheck": {"path": "/etc/passwd"}}',
        b'{"rule": {"id": "5712", "level": 1}, "agent": {"id": "007", "ip": null}, "data": null}',
        '{"rule": {"id": "5712", "level": 1}, "full_log": "caf\u00e9 \u2028 \u0085 \u2029"}'.encode(),
        b' {"rule":\r\n {"id": "5712", "level": 1},\t"location": "x"}\r',
    ],
)
def test_alerts_the_typed_path_and_the_dict_path_both_accept(line: bytes) -> None:
    """The Alert is the one alert_from_wazuh builds from orjson's dict, and the lazy raw alert
    equals that dict; its bytes are one JSON line no line splitter can cut."""
    alert = parse_wazuh_line(line)
    reference = alert_from_wazuh(orjson.loads(line))
    assert alert == reference
    assert isinstance(alert.raw, RawAlert)
    assert alert.raw == orjson.loads(line) == reference.raw
    assert alert.to_wazuh() == orjson.loads(line)
    text = alert.raw.json
    assert orjson.loads(text) == orjson.loads(line)
    assert len(text.decode().splitlines()) == 1 and b"\r" not in text and b"\n" not in text
    assert not any(ch in text.decode() for ch in "\x85\u2028\u2029")
    assert parse_json_alert(line) == alert


def test_the_raw_alert_is_decoded_only_when_read() -> None:
    raw = RawAlert(b'{"rule": not json yet')
    assert raw and raw.json == b'{"rule": not json yet'  # built and embedded without decoding
    with pytest.raises(ValueError, match="line 1 column"):
        raw["rule"]
    line = wazuh_line()
    alert = parse_wazuh_line(line)
    assert isinstance(alert.raw, RawAlert)
    assert alert.raw.decoded() is alert.raw.decoded()  # decoded once
    copy = alert.to_wazuh()
    copy["rule"] = "changed"
    assert alert.raw["rule"]["id"] == "5712" and dict(alert.raw) == json.loads(line)
    assert sorted(alert.raw) == sorted(alert.raw.keys()) == sorted(json.loads(line))
    assert alert.raw != RawAlert(wazuh_line(n=1)) and alert.raw == RawAlert(line + b"  ")


def test_new_alert_builds_what_the_constructor_builds() -> None:
    values = (7, 3, ("a",), "i", "t", "d", "a1", "n", "ip", "s", "su", "du", "f", "l", "fl", {"r": 1})
    fast = new_alert(*values)
    slow = Alert(*values)
    assert type(fast) is Alert and fast == slow and repr(fast) == repr(slow)
    assert [getattr(fast, f) for f in Alert.__dataclass_fields__] == list(values)
    with pytest.raises(FrozenInstanceError):
        fast.level = 4  # type: ignore[misc]
    assert hash(fast) == hash(slow)


def test_detect_format() -> None:
    assert detect_format(b"\n  " + wazuh_line()) == "wazuh"
    assert detect_format(b'{"rule_id": 5712, "level": 10}\n') == "json"
    assert detect_format(b"** Alert 1461258591.68247: - syslog,\n") == "ossec"
    assert detect_format(b'{"rule": {"id": "57') == "wazuh"  # incomplete first line
    with pytest.raises(UnknownFormat, match="cannot tell the alert format"):
        detect_format(b"Nov 22 08:00:00 host sshd[1]: hello")


def test_excerpt_is_printable_and_short() -> None:
    text = excerpt(b"\x1b[2Jroot\x00\n\xff" + b"A" * 500)
    assert text.isprintable() and text.isascii()
    assert text.startswith("\\x1b[2Jroot\\x00\\n\\xff") and text.endswith("...")
    assert len(text) < 200


def test_reader_holds_back_partial_lines_and_reports_offsets() -> None:
    r = RecordReader("auto", max_bytes=1024)
    line = wazuh_line()
    assert list(r.feed(line[:50])) == []
    assert r.position == 0
    out = list(r.feed(line[50:] + b"\n\n" + line[:10]))
    assert len(out) == 1 and isinstance(out[0][0], Alert) and out[0][1] == len(line)
    assert r.position == len(line) + 2  # the blank line is consumed, the partial one is not
    assert r.finish()[0][1] == len(line) + 2 + 10  # at EOF the partial line counts (and is refused)


def test_reader_drops_oversized_lines_without_buffering_them() -> None:
    r = RecordReader("wazuh", max_bytes=1024)
    assert list(r.feed(b"{" + b"x" * 5000)) == []
    assert r._partial == b""
    out = list(r.feed(b"y" * 5000 + b"\n" + wazuh_line()))
    assert isinstance(out[0][0], Rejected) and "over 1024 bytes" in out[0][0].reason
    assert out[0][1] == 10_002
    assert isinstance(out[1][0], Alert)


def test_reader_frames_ossec_blocks() -> None:
    data = (EXAMPLES / "ossec-ssh-bruteforce.log").read_bytes()
    r = RecordReader("auto")
    items: list[tuple[Alert | Rejected, int]] = []
    for i in range(0, len(data), 7):  # odd chunk sizes: blocks split anywhere
        items.extend(r.feed(data[i : i + 7]))
    assert r.framing == "ossec"
    assert len(items) == 11 and all(isinstance(i, Alert) for i, _ in items)
    assert items[-1][1] == len(data)
