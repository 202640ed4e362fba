"""parse_wazuh_line's typed (msgspec) path against the dict path it stands in for.

The reference is what parse_wazuh_line did before: codec.loads (orjson) with its error mapping,
then alert_from_wazuh. On any line, both must accept with equal alerts (and raw alerts), or both
refuse with the same class and message. Lines are the sample alerts mutated at random (seeded):
tokens that matter to one decoder and not the other (bad UTF-8, huge numbers, NaN, nesting, lone
surrogates, duplicate keys, line breaks) put in, bytes cut out.
"""

from __future__ import annotations

import random

import orjson
import pytest

from dfir_ar import parsers
from dfir_ar.alert import Alert
from dfir_ar.parsers import MalformedAlert, alert_from_wazuh, parse_json_alert, parse_wazuh_line

from .conftest import EXAMPLES, wazuh_line

_TOKENS = [
    b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"1e999", b"-", b"e5", b"E+400", b"\xff",
    b"\xc3\xa9", b"\xe2\x80\xa8", b"\xed\xa0\x80", b"\\u00e9", b"\\ud800", b"null", b"true", b"0",
    b" ", b"\n", b"\r", b"\x00", b'"rule"', b'"agent"', b'"id"', b'"data"', b'"level"', b'"groups"',
    b'"syscheck"', b'"path"', b'"filename"', b"9" * 400, b"\xef\xbb\xbf", b"NaN", b"[" * 1100,
    b'"x":', b'{"id":"001"}', b'"5712"', b"5712", b"[]", b"{}", b'""', b'","', b"1.5", b"-0",
]


def _seeds() -> list[bytes]:
    lines = [wazuh_line(n=i) for i in range(3)]
    lines += (EXAMPLES / "wazuh-ssh-bruteforce.json").read_bytes().splitlines()
    lines += [x for x in (EXAMPLES / "hostile.jsonl").read_bytes().splitlines() if len(x) < 4000]
    return lines


def _mutate(rnd: random.Random, line: bytes) -> bytes:
    out = bytearray(line)
    for _ in range(rnd.randint(1, 3)):
        pos = rnd.randint(0, len(out))
        op = rnd.random()
        if op < 0.4:
            out[pos:pos] = rnd.choice(_TOKENS)
        elif op < 0.7:
            del out[pos : pos + rnd.randint(1, 8)]
        else:
            out[pos : pos + rnd.randint(1, 4)] = rnd.choice(_TOKENS)
    return bytes(out)


def _reference(line: bytes) -> Alert | MalformedAlert:
    try:
        return alert_from_wazuh(parsers._parse_json(line, 1 << 20))
    except MalformedAlert as exc:
        return exc


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_typed_path_accepts_and_refuses_exactly_as_the_dict_path(seed: int) -> None:
    rnd = random.Random(seed)
    seeds = _seeds()
    typed = refused = 0
    for _ in range(3000):
        line = _mutate(rnd, rnd.choice(seeds))
        try:
            got: Alert | MalformedAlert = parse_wazuh_line(line, 1 << 20)
        except MalformedAlert as exc:
            got = exc
        want = _reference(line)
        if isinstance(want, MalformedAlert):
            refused += 1
            assert type(got) is type(want) and str(got) == str(want), line
            continue
        assert isinstance(got, Alert), (got, line)
        assert got == want and got.raw == want.raw, line
        assert parse_json_alert(line, 1 << 20) == got
        typed += parsers._typed_wazuh(line) is not None
    # Both outcomes, and the typed path, were exercised (not a test that cannot fail).
    assert typed > 100 and refused > 1000


def _number(rnd: random.Random) -> bytes:
    digits = rnd.choice([1, 5, 200, 209, 210, 211, 300, 308, 309, 310, 400])
    text = rnd.choice(["", "-"]) + str(rnd.randint(1, 9)) + "".join(
        rnd.choice("0123456789") for _ in range(digits - 1)
    )
    if rnd.random() < 0.5:
        text += "." + "7" * rnd.choice([1, 50, 320])
    if rnd.random() < 0.7:
        exponent = rnd.choice([0, 9, 99, 100, 290, 307, 308, 309, 400, 5000])
        text += rnd.choice("eE") + rnd.choice(["", "+", "-"]) + str(exponent).zfill(rnd.randint(1, 4))
    return text.encode()


def test_every_number_orjson_refuses_sends_the_line_the_exact_way() -> None:
    """msgspec skips a number it does not read without looking at its size; orjson refuses one
    beyond a double. The cheap check may flag too much, never too little."""
    rnd = random.Random(7)
    refused = 0
    for _ in range(4000):
        # every way a number can end: "]", "}", "," and each whitespace before them
        head, tail = rnd.choice([(b"[", b"]}"), (b"", b"}"), (b"[", b", 1]}"), (b"", b' , "y": 1}'),
                                 (b"[", b"\t]}"), (b"", b"\r\n}"), (b"{\"a\": ", b"\n}}")])
        line = b'{"rule": {"id": "5712", "level": 1}, "x": ' + head + _number(rnd) + tail
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            refused += 1
            assert parsers._typed_wazuh(line) is None, line
            with pytest.raises(MalformedAlert, match="number is infinity"):
                parse_wazuh_line(line)
    assert refused > 500
    # The common case stays on the typed path, and so does an alert quoting a hex hash.
    assert parsers._typed_wazuh(wazuh_line()) is not None
    assert parsers._typed_wazuh(wazuh_line(md5="9e107d9d372bb6826bd81d3542a419d6", x="3e123")) is not None
