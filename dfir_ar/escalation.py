"""Repeated-offender escalation with decay. Pure: the time is passed in.

Wazuh semantics: the first offence uses the binding's ``timeout``; the n-th *repeat* uses the
(n-1)-th value of ``repeated_offenders`` (minutes), and the last value for every repeat after that.
Wazuh never resets the counter until execd restarts (Wazuh #15171), so one address that misbehaved
last month gets the longest block for a typo today. Here a counter decays: when the last offence is
older than ``global.offender_window`` the next one counts as a first offence again.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class Offence(msgspec.Struct, frozen=True, gc=False):
    count: int
    """1 for a first offence, 2 for the first repeat, ..."""
    timeout: float | None
    """Seconds this offence keeps the action in place; None: no undo."""


def offence_count(previous: int, last_offence: float | None, now: float, window: float) -> int:
    """The number of this offence, given the stored counter and when it was last bumped."""
    if previous <= 0 or last_offence is None or now - last_offence > window:
        return 1
    return previous + 1


def timeout_for(
    count: int, timeout: float | None, repeated_offenders: Sequence[float]
) -> float | None:
    """Seconds for the ``count``-th offence (Wazuh's table; minutes in repeated_offenders)."""
    if count <= 1 or not repeated_offenders or timeout is None:
        # Wazuh only escalates responses that have a timeout at all: a permanent block stays so.
        return timeout
    index = min(count - 2, len(repeated_offenders) - 1)
    return float(repeated_offenders[index]) * 60.0


def next_offence(
    previous: int,
    *,
    last_offence: float | None,
    now: float,
    window: float,
    timeout: float | None,
    repeated_offenders: Sequence[float],
) -> Offence:
    """Count this offence (with decay) and pick its timeout."""
    count = offence_count(previous, last_offence, now, window)
    return Offence(count=count, timeout=timeout_for(count, timeout, repeated_offenders))
