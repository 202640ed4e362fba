"""Regression: validate's patterns must match the whole value. With re.match, "$" also matched
before a trailing newline, so "root\\n" passed as a username (found by the hostile corpus)."""

from __future__ import annotations

import pytest

from dfir_ar.errors import InvalidAddress, InvalidArgument, InvalidUsername
from dfir_ar.validate import parse_ip, parse_token, parse_username


@pytest.mark.parametrize("value", ["root\n", "root\r\n", "\nroot", "root\n\n"])
def test_username_with_a_newline_is_refused(value: str) -> None:
    with pytest.raises(InvalidUsername):
        parse_username(value)


@pytest.mark.parametrize("value", ["001\n", "a\nb", "x\n"])
def test_token_with_a_newline_is_refused(value: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_token(value, "alert id")


@pytest.mark.parametrize("value", ["198.51.100.6\n", "198.51.100.6\n\n", "\n198.51.100.6"])
def test_address_with_a_newline_is_refused(value: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_ip(value)


def test_good_values_still_pass() -> None:
    assert parse_username("alice.smith@corp") == "alice.smith@corp"
    assert parse_token("1795334410.3968", "alert id") == "1795334410.3968"
    assert str(parse_ip("198.51.100.6")) == "198.51.100.6"
