"""Which [[active_response]] bindings an alert triggers. Pure: no I/O, no clock.

Semantics (REFERENCE.md, "Matching"):

- ``rules_id``: exact rule ids. Compiled into one dict from rule id to bindings, so the cost of
  matching does not grow with the number of ids configured (OSSEC walks a list per binding).
- ``rules_group``: matched against the rule's comma-terminated group string
  (``syslog,sshd,authentication_failed,``) as OSSEC's OSMatch does: ``|`` separates
  alternatives, each a substring, ``^`` anchors an alternative at the start and ``$`` at the end.
  Writing the trailing comma (``sshd,``) therefore matches a whole group name only.
- ``level``: the alert's level is at least the configured level.
- OSSEC mode: level OR group OR id. Wazuh mode (>= 3.0): (level AND group when both are set,
  else whichever is set) OR id.
- Alerts of level 0 never trigger anything, and disabled bindings never fire.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfir_ar.alert import Alert
from dfir_ar.config.models import ActiveResponseConfig, Config, Matching

GROUP_CACHE = 4096


@dataclass(frozen=True, slots=True)
class GroupPattern:
    """One compiled ``rules_group`` value: alternatives split on ``|``."""

    contains: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    exact: tuple[str, ...] = ()

    @classmethod
    def compile(cls, text: str) -> GroupPattern:
        contains: list[str] = []
        prefixes: list[str] = []
        suffixes: list[str] = []
        exact: list[str] = []
        for part in text.split("|"):
            alt = part.strip()
            if not alt:
                continue
            start = alt.startswith("^")
            end = alt.endswith("$") and len(alt) > (1 if start else 0)
            core = alt[1 if start else 0 : -1 if end else None]
            if start and end:
                exact.append(core)
            elif start:
                prefixes.append(core)
            elif end:
                suffixes.append(core)
            else:
                contains.append(core)
        return cls(tuple(contains), tuple(prefixes), tuple(suffixes), tuple(exact))

    def matches(self, group_string: str) -> bool:
        for part in self.contains:
            if part in group_string:
                return True
        if self.prefixes and group_string.startswith(self.prefixes):
            return True
        if self.suffixes and group_string.endswith(self.suffixes):
            return True
        return group_string in self.exact


@dataclass(frozen=True, slots=True)
class _Conditional:
    """A binding decided by level and/or group (not by rule id alone)."""

    index: int
    level: int | None
    group: GroupPattern | None


class Matcher:
    """Compiled from a Config; ``match`` returns 0-based indexes into config.active_response."""

    def __init__(self, config: Config) -> None:
        self.mode = config.global_.matching
        self.by_id: dict[int, tuple[int, ...]] = {}
        conditional: list[_Conditional] = []
        ids: dict[int, list[int]] = {}
        for index, ar in enumerate(config.active_response):
            if ar.disabled:
                continue
            for rule_id in set(ar.rules_id):
                ids.setdefault(rule_id, []).append(index)
            cond = _compile_conditions(index, ar)
            if cond is not None:
                conditional.append(cond)
        self.by_id = {k: tuple(v) for k, v in ids.items()}
        self.conditional: tuple[_Conditional, ...] = tuple(conditional)
        self.size = len(config.active_response)
        # Rules carry a few hundred distinct group lists: join each once, not once per alert.
        self._group_strings: dict[tuple[str, ...], str] = {}

    def match(self, alert: Alert) -> list[int]:
        """Indexes (ascending, config order) of the bindings this alert fires."""
        if alert.level <= 0:
            return []
        by_id = self.by_id.get(alert.rule_id, ())
        if not self.conditional:
            return list(by_id)
        hits = set(by_id)
        groups: str | None = None
        wazuh = self.mode is Matching.WAZUH
        for cond in self.conditional:
            if cond.index in hits:
                continue
            level_ok = cond.level is not None and alert.level >= cond.level
            group_ok = False
            if cond.group is not None and (wazuh or not level_ok):
                if groups is None:
                    groups = self._group_strings.get(alert.groups)
                    if groups is None:
                        groups = alert.group_string
                        if len(self._group_strings) >= GROUP_CACHE:
                            self._group_strings.clear()
                        self._group_strings[alert.groups] = groups
                group_ok = cond.group.matches(groups)
            if wazuh and cond.level is not None and cond.group is not None:
                fired = level_ok and group_ok
            else:
                fired = level_ok or group_ok
            if fired:
                hits.add(cond.index)
        return sorted(hits)

    def explain(self, index: int, alert: Alert, config: Config) -> str:
        """Why binding ``index`` did not fire for ``alert`` (for ``dfir-ar simulate``)."""
        ar = config.active_response[index]
        if ar.disabled:
            return "binding disabled"
        if alert.level <= 0:
            return "level 0 alerts never trigger a response"
        reasons: list[str] = []
        if ar.rules_id:
            reasons.append(f"rule {alert.rule_id} not in rules_id")
        if ar.level is not None and alert.level < ar.level:
            reasons.append(f"level {alert.level} < {ar.level}")
        if ar.rules_group and not GroupPattern.compile(ar.rules_group).matches(alert.group_string):
            reasons.append(f"groups {alert.group_string!r} do not match {ar.rules_group!r}")
        if not reasons and self.mode is Matching.WAZUH:
            # Wazuh mode: level alone (or the group alone) is not enough when both are set.
            reasons.append("Wazuh matching needs both level and rules_group")
        return ", ".join(reasons) or "no condition met"


def _compile_conditions(index: int, ar: ActiveResponseConfig) -> _Conditional | None:
    group = GroupPattern.compile(ar.rules_group) if ar.rules_group else None
    if ar.level is None and group is None:
        return None
    return _Conditional(index=index, level=ar.level, group=group)

