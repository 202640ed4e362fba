from __future__ import annotations

import pytest

from dfir_ar.collector import OptionSpec, parse_options
from dfir_ar.errors import InvalidArgument

SPECS = (
    OptionSpec("duration", float, 600.0, "seconds"),
    OptionSpec("max-packets", int, None, "cap"),
    OptionSpec("interface", list, [], "repeatable"),
    OptionSpec("physical", bool, False, "flag"),
)


def test_parse() -> None:
    got = parse_options(
        SPECS, ["--duration", "60", "--interface", "a", "--interface=b", "--physical"], "pcap"
    )
    assert got == {"duration": 60.0, "max-packets": None, "interface": ["a", "b"], "physical": True}


@pytest.mark.parametrize(
    "args",
    [["--nope", "1"], ["--duration"], ["--duration", "nan"], ["--max-packets", "1.5"], ["60"],
     ["--duration", "inf"], ["--physical=maybe"]],
)
def test_refused(args: list[str]) -> None:
    with pytest.raises(InvalidArgument):
        parse_options(SPECS, args, "pcap")


def test_defaults_are_not_shared() -> None:
    a = parse_options(SPECS, ["--interface", "x"], "pcap")
    b = parse_options(SPECS, [], "pcap")
    assert a["interface"] == ["x"] and b["interface"] == []
