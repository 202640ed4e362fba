"""``dfir-ar simulate``: run alerts through the real parser, matcher, white list and rails, and
print what would fire, where, and why not. Nothing is executed and no state is written.

The rails the executor applies are replayed on the alerts' own timestamps: the per-command rate
limit, the global cap on active stateful responses, and repeat-offender escalation (the timeout
a repeat would get), with the same dedup key the ledger uses (command + srcip or user).
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from dfir_ar.alert import Alert
from dfir_ar.cli.common import config_option, json_option, load, print_json, print_table
from dfir_ar.config.models import Config, Location
from dfir_ar.escalation import next_offence
from dfir_ar.parsers import DEFAULT_MAX_ALERT_BYTES, excerpt
from dfir_ar.pipeline import Decision, Pipeline, not_here, where
from dfir_ar.rails import RateLimiter, active_cap_allows, host_protected_networks
from dfir_ar.sources.base import Rejected
from dfir_ar.sources.reader import RecordReader

CHUNK = 1 << 20


def alert_time(alert: Alert, fallback: float) -> float:
    """The alert's own time (Wazuh ISO 8601, or OSSEC's local "2016 Apr 21 13:09:51")."""
    ts = alert.timestamp
    if ts:
        for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
            try:
                return datetime.strptime(ts, fmt).timestamp()
            except ValueError:
                pass
        try:
            return datetime.strptime(ts, "%Y %b %d %H:%M:%S").timestamp()
        except ValueError:
            pass
    return fallback


def nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass
class Row:
    record: int
    alert: str
    rule: str
    level: str
    srcip: str
    binding: str
    command: str
    where: str
    verdict: str
    reason: str = ""
    timeout: float | None = None

    def cells(self) -> list[str]:
        text = self.verdict if not self.reason else f"{self.verdict}: {self.reason}"
        return [self.alert, self.rule, self.level, self.srcip, self.binding, self.command,
                self.where, text]

    def as_json(self) -> dict[str, Any]:
        return {
            "record": self.record, "alert": self.alert, "rule": self.rule, "level": self.level,
            "srcip": self.srcip, "binding": self.binding, "command": self.command,
            "where": self.where, "verdict": self.verdict, "reason": self.reason,
            "timeout": self.timeout,
        }


@dataclass
class Simulation:
    """Pure replay of the executor's rails over decisions (time is the alert's)."""

    config: Config
    pipeline: Pipeline
    limiters: dict[str, RateLimiter] = field(default_factory=dict)
    active: dict[tuple[str, str], float] = field(default_factory=dict)
    """(command, key) -> expiry of stateful responses in place."""
    offences: dict[tuple[str, str], tuple[int, float | None]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    explain: bool = False
    """Say, per binding, why an alert matched none (the --json output always does)."""

    def rows_for(self, record: int, item: Alert | Rejected, now: float) -> list[Row]:
        if isinstance(item, Rejected):
            self._count("unparsable")
            return [Row(record, f"#{record}", "-", "-", "-", "-", "-", "-", "refused",
                        f"{item.reason} [{item.excerpt}]")]
        alert = item
        label = excerpt(alert.id, 30) if alert.id else f"#{record}"
        srcip = excerpt(alert.srcip, 40) if alert.srcip is not None else "-"
        base = (record, label, str(alert.rule_id), str(alert.level), srcip)
        decisions = self.pipeline.decide(alert, now)
        if not decisions:
            self._count("no match")
            matcher, config = self.pipeline.matcher, self.config
            why = "; ".join(
                f"#{i + 1} {ar.command}: {matcher.explain(i, alert, config)}"
                for i, ar in enumerate(config.active_response)
            )
            return [Row(*base, "-", "-", "-", "no match", why if self.explain else "")]
        rows: list[Row] = []
        for d in decisions:
            rows.append(self._row(base, d, now))
        return rows

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _row(self, base: tuple[int, str, str, str, str], d: Decision, now: float) -> Row:
        if d.binding is None:
            self._count("refused")
            return Row(*base, "-", "-", "-", "refused", d.refused or "")
        ar = self.config.active_response[d.binding]
        binding = f"#{d.binding + 1}"
        place = where(ar)
        if d.order is None:
            self._count("refused")
            return Row(*base, binding, d.command, place, "refused", d.refused or "")
        order = d.order
        if order.location is Location.LOCAL:
            alert = order.alert
            if order.agent_ids:
                place = f"local (agent {order.agent_ids[0]})"
            elif alert is not None and alert.agent_name:
                place = f"local (agent {excerpt(alert.agent_name, 30)}, by name)"
        g = self.config.global_
        elsewhere = not_here(order, g.agent_id, g.agent_name or socket.gethostname())
        if elsewhere is not None:
            self._count("refused")
            return Row(*base, binding, d.command, place, "not here", elsewhere)
        cmd = self.config.command_named(order.command)
        if cmd is not None and cmd.max_per_minute:
            limiter = self.limiters.setdefault(cmd.name, RateLimiter(cmd.max_per_minute))
            if not limiter.allow(cmd.name, now):
                self._count("refused")
                return Row(*base, binding, d.command, place, "refused",
                           f"rate limit: {cmd.max_per_minute}/min for {cmd.name}")
        target = order.target
        # The ledger's dedup key is the responder's: the argument the command acts on.
        if cmd is not None and cmd.expects_srcip:
            key_value = str(target.srcip)
        elif cmd is not None and cmd.expects_username:
            key_value = str(target.username)
        else:
            key_value = str(target.filename or "")
        key = (order.command, key_value)
        # The engine's own escalation: offences decay after offender_window (Wazuh never
        # forgets them).
        previous, last = self.offences.get(key, (0, None))
        offence = next_offence(
            previous, last_offence=last, now=now, window=self.config.global_.offender_window,
            timeout=order.timeout, repeated_offenders=order.repeated_offenders,
        )
        self.offences[key] = (offence.count, now)
        n, timeout = offence.count, offence.timeout
        for k in [k for k, exp in self.active.items() if exp <= now]:
            del self.active[k]
        note = ""
        if timeout is not None:
            if key not in self.active and not active_cap_allows(
                len(self.active), self.config.global_.max_active_responses
            ):
                self._count("refused")
                return Row(*base, binding, d.command, place, "refused",
                           f"cap: {self.config.global_.max_active_responses} active responses")
            refresh = key in self.active
            self.active[key] = now + timeout
            note = f"{nth(n)} offence, " if n > 1 else ""
            note += f"timeout {timeout:g}s" + (" (refreshes the active one)" if refresh else "")
        self._count("fires")
        return Row(*base, binding, d.command, place, "fires", note, timeout)


def _records(paths: tuple[str, ...], fmt: str, max_bytes: int) -> Iterator[Alert | Rejected]:
    for name in paths:
        reader = RecordReader(fmt, max_bytes)
        if name == "-":
            stream = sys.stdin.buffer
            while chunk := stream.read(CHUNK):
                for item, _ in reader.feed(chunk):
                    yield item
        else:
            try:
                with Path(name).open("rb") as f:
                    while chunk := f.read(CHUNK):
                        for item, _ in reader.feed(chunk):
                            yield item
            except OSError as exc:
                raise click.BadParameter(f"{name}: {exc.strerror}", param_hint="ALERTS") from None
        for item, _ in reader.finish():
            yield item


@click.command("simulate")
@config_option
@json_option
@click.option(
    "--format", "fmt", type=click.Choice(["auto", "wazuh", "ossec", "json"]), default="auto",
    show_default=True, help="Alert format; auto tells Wazuh alerts.json, OSSEC alerts.log and "
    "plain JSON apart.",
)
@click.option(
    "--max-alert-bytes", type=click.IntRange(min=1024), default=DEFAULT_MAX_ALERT_BYTES,
    show_default=True, help="Refuse alerts longer than this (the sources' max_alert_bytes).",
)
@click.option(
    "--host-protection/--no-host-protection", default=True, show_default=True,
    help="Also protect this host's own addresses and default gateways, as serve does. Turn it "
    "off to simulate for a different host.",
)
@click.option("--why", is_flag=True, help="For alerts that match nothing, say why per binding.")
@click.argument("alerts", nargs=-1, required=True)
def simulate(
    config_file: Path | None,
    as_json: bool,
    fmt: str,
    max_alert_bytes: int,
    host_protection: bool,
    why: bool,
    alerts: tuple[str, ...],
) -> None:
    """Show what ALERTS would fire, where, and why not. Runs nothing.

    ALERTS are files of Wazuh alerts.json lines, OSSEC alerts.log blocks or plain JSON lines
    ("-" reads stdin). Each alert goes through the same parser, matcher, white list and argument
    checks as serve; the rate limits, the cap on active responses and repeat-offender timeouts
    are replayed on the alerts' own timestamps.

    \b
    Verdicts:
      fires         an order would be sent (with its timeout)
      refused: WHY  white list, invalid srcip/user, missing argument, level 0, rate limit, cap
      not here      location local/defined-agent names another agent than global.agent_id
      no match      no [[active_response]] matches the rule id, group or level (--why: per
                    binding, what did not match)

    \b
    Examples:
      dfir-ar simulate -c examples/local.toml examples/alerts/wazuh-ssh-bruteforce.json
      dfir-ar simulate -c /etc/dfir-ar/dfir-ar.toml --json /var/ossec/logs/alerts/alerts.json
    """
    loaded = load(config_file)
    config = loaded.config
    g = config.global_
    protected = (
        host_protected_networks(own=g.protect_own_addresses, gateways=g.protect_gateway)
        if host_protection
        else host_protected_networks(own=False, gateways=False)
    )
    sim = Simulation(config=config, pipeline=Pipeline(config, protected), explain=as_json or why)
    rows: list[Row] = []
    clock = time.time()
    for record, item in enumerate(_records(alerts, fmt, max_alert_bytes), 1):
        if isinstance(item, Alert):
            clock = alert_time(item, clock)
        rows.extend(sim.rows_for(record, item, clock))
    counts = sim.counts
    summary = {
        "records": len({r.record for r in rows}),
        "fires": counts.get("fires", 0),
        "refused": counts.get("refused", 0),
        "no_match": counts.get("no match", 0),
        "unparsable": counts.get("unparsable", 0),
    }
    if as_json:
        print_json({"results": [r.as_json() for r in rows], "summary": summary})
        return
    print_table(
        ["alert", "rule", "level", "srcip", "binding", "command", "where", "verdict"],
        [r.cells() for r in rows],
        empty="no alerts in the input",
        whole=("alert", "srcip", "command"),
    )
    click.echo(
        f"{summary['records']} record(s): {summary['fires']} response(s) would fire, "
        f"{summary['refused']} refused, {summary['no_match']} alert(s) without a match, "
        f"{summary['unparsable']} unparsable record(s)",
        err=True,
    )
