"""The pure timeout table and escalation: no clock, no sleeping."""

from __future__ import annotations

import math

import pytest

from dfir_ar.escalation import next_offence, offence_count, timeout_for
from dfir_ar.timeouts import TimeoutTable, wait_seconds


def test_due_returns_expired_keys_in_deadline_order() -> None:
    t: TimeoutTable[str] = TimeoutTable()
    t.schedule("c", 30.0)
    t.schedule("a", 10.0)
    t.schedule("b", 20.0)
    assert t.next_deadline() == 10.0
    assert t.due(now=5.0) == []
    assert t.due(now=20.0) == ["a", "b"]
    assert len(t) == 1
    assert t.next_deadline() == 30.0
    assert t.due(now=math.inf) == ["c"]
    assert t.next_deadline() is None


def test_reschedule_later_and_earlier_and_cancel() -> None:
    t: TimeoutTable[tuple[str, str]] = TimeoutTable()
    k = ("host-deny", "203.0.113.7")
    t.schedule(k, 10.0)
    t.schedule(k, 100.0)  # refreshed: the old deadline must not fire
    assert t.due(now=50.0) == []
    assert t.next_deadline() == 100.0
    t.schedule(k, 5.0)  # moved earlier
    assert t.next_deadline() == 5.0
    assert t.cancel(k) is True
    assert t.cancel(k) is False
    assert t.due(now=1e9) == []
    assert k not in t


def test_due_respects_limit() -> None:
    t: TimeoutTable[int] = TimeoutTable()
    for i in range(10):
        t.schedule(i, float(i))
    assert t.due(now=100.0, limit=3) == [0, 1, 2]
    assert len(t) == 7


def test_heap_stays_compact_under_constant_refresh() -> None:
    t: TimeoutTable[int] = TimeoutTable()
    for round_ in range(200):
        for key in range(10):
            t.schedule(key, float(round_))
    assert len(t) == 10
    assert len(t._heap) <= 4 * 10 + 64 + 1


def test_wait_seconds_sleeps_until_next_deadline_capped() -> None:
    assert wait_seconds(100.0, None, 5.0) == 5.0
    assert wait_seconds(100.0, 100.25, 5.0) == pytest.approx(0.25)
    assert wait_seconds(100.0, 99.0, 5.0) == 0.0
    assert wait_seconds(100.0, 1000.0, 5.0) == 5.0


@pytest.mark.parametrize(
    ("count", "expected"),
    [(1, 600.0), (2, 60 * 60.0), (3, 120 * 60.0), (4, 180 * 60.0), (5, 180 * 60.0), (9, 180 * 60.0)],
)
def test_wazuh_repeated_offenders_table(count: int, expected: float) -> None:
    # First offence: timeout; n-th repeat: the (n-1)-th value in minutes; the last one after.
    assert timeout_for(count, 600.0, (60, 120, 180)) == expected


def test_no_table_or_no_timeout_never_escalates() -> None:
    assert timeout_for(5, 600.0, ()) == 600.0
    assert timeout_for(5, None, (60,)) is None


def test_counter_decays_after_window() -> None:
    window = 86_400.0
    assert offence_count(0, None, 1000.0, window) == 1
    assert offence_count(1, 1000.0, 1000.0 + 3600, window) == 2
    assert offence_count(4, 1000.0, 1000.0 + window, window) == 5  # exactly at the edge: counts
    assert offence_count(4, 1000.0, 1000.0 + window + 1, window) == 1  # decayed
    off = next_offence(2, last_offence=0.0, now=10.0, window=window, timeout=60.0,
                       repeated_offenders=(5, 10))
    assert (off.count, off.timeout) == (3, 600.0)
