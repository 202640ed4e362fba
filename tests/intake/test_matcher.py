from __future__ import annotations

import time
from typing import Any

import pytest

from dfir_ar.alert import Alert
from dfir_ar.matcher import GroupPattern, Matcher

from .conftest import make_config

SSHD = ("syslog", "sshd", "authentication_failed")


def alert(rule_id: int = 5712, level: int = 10, groups: tuple[str, ...] = SSHD) -> Alert:
    return Alert(rule_id=rule_id, level=level, groups=groups, srcip="198.51.100.6")


def matcher(mode: str, *bindings: dict[str, Any]) -> Matcher:
    ars = [{"command": "block", **b} for b in bindings]
    return Matcher(make_config(**{"global": {"matching": mode}}, active_response=ars))


@pytest.mark.parametrize(
    ("pattern", "groups", "hit"),
    [
        ("sshd", SSHD, True),
        ("authentication_failed", SSHD, True),
        ("authentication_fail", SSHD, True),  # a substring, as OSSEC/Wazuh match it
        ("authentication_failed,", SSHD, True),
        ("failed,sshd", SSHD, False),
        ("web|sshd", SSHD, True),
        ("web|attack", SSHD, False),
        ("^syslog,", SSHD, True),
        ("^sshd", SSHD, False),
        ("failed,$", SSHD, True),
        ("^syslog,sshd,authentication_failed,$", SSHD, True),
        ("^syslog,$", SSHD, False),
        ("sshd", (), False),
    ],
)
def test_group_patterns(pattern: str, groups: tuple[str, ...], hit: bool) -> None:
    assert GroupPattern.compile(pattern).matches(alert(groups=groups).group_string) is hit


def test_rules_id_exact() -> None:
    m = matcher("wazuh", {"rules_id": [5712, 5720]})
    assert m.match(alert(5712)) == [0]
    assert m.match(alert(5720)) == [0]
    assert m.match(alert(571)) == []


def test_level_is_at_least() -> None:
    m = matcher("wazuh", {"level": 10})
    assert m.match(alert(level=10)) == [0]
    assert m.match(alert(level=15)) == [0]
    assert m.match(alert(level=9)) == []


def test_wazuh_mode_level_and_group_together_or_id() -> None:
    m = matcher("wazuh", {"level": 10, "rules_group": "sshd", "rules_id": [1002]})
    assert m.match(alert(level=10)) == [0]  # level and group
    assert m.match(alert(level=5)) == []  # group only: not enough in Wazuh mode
    assert m.match(alert(level=12, groups=("web",))) == []  # level only: not enough
    assert m.match(alert(rule_id=1002, level=2, groups=("web",))) == [0]  # the id alone


def test_ossec_mode_level_or_group_or_id() -> None:
    m = matcher("ossec", {"level": 10, "rules_group": "sshd", "rules_id": [1002]})
    assert m.match(alert(level=5)) == [0]  # group alone
    assert m.match(alert(level=12, groups=("web",))) == [0]  # level alone
    assert m.match(alert(rule_id=1002, level=2, groups=("web",))) == [0]
    assert m.match(alert(rule_id=1, level=2, groups=("web",))) == []


def test_explain_says_why_nothing_matched() -> None:
    cfg = make_config(**{"global": {"matching": "wazuh"}}, active_response=[
        {"command": "block", "level": 10, "rules_group": "web"},
        {"command": "block", "rules_id": [1], "disabled": True},
    ])
    m = Matcher(cfg)
    assert m.explain(0, alert(level=5), cfg) == (
        "level 5 < 10, groups 'syslog,sshd,authentication_failed,' do not match 'web'")
    assert m.explain(0, alert(level=12), cfg).startswith("groups")
    assert m.explain(1, alert(), cfg) == "binding disabled"


def test_level_zero_never_fires_and_disabled_never_fires() -> None:
    m = matcher("ossec", {"rules_id": [5712]}, {"level": 0}, {"rules_id": [5712], "disabled": True})
    assert m.match(alert(level=0)) == []
    assert m.match(alert(level=1)) == [0, 1]


def test_results_in_config_order_without_duplicates() -> None:
    m = matcher(
        "wazuh",
        {"rules_group": "sshd"},
        {"rules_id": [5712, 5712]},
        {"level": 3, "rules_id": [5712]},
    )
    assert m.match(alert()) == [0, 1, 2]


def test_cost_does_not_grow_with_rules_id_entries() -> None:
    small = matcher("wazuh", {"rules_id": [5712]})
    big = matcher("wazuh", {"rules_id": [*range(100_000, 200_000), 5712]})
    a = alert()

    def cost(m: Matcher) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(2000):
                m.match(a)
            best = min(best, time.perf_counter() - start)
        return best

    assert big.match(a) == [0]
    # 100,001 ids vs 1: a list scan would be ~10^5 times slower; a dict lookup is the same.
    assert cost(big) < cost(small) * 3 + 0.002
