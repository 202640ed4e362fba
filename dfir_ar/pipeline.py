"""Alert -> decisions: match the bindings, parse every argument the command expects, apply the
white list, and build the orders. No I/O: the clock reading is passed in, the host's protected
networks are read once by the caller (dfir_ar.rails.host_protected_networks). The only state is
a bounded cache of srcip verdicts, so the same alert always gets the same decisions.

The per-command rate limit and the global cap need the executor's live state, so the executor
applies them (with dfir_ar.rails) after ``decide``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from dfir_ar.alert import MANAGER_AGENT_ID, Alert
from dfir_ar.config.models import ActiveResponseConfig, CommandConfig, Config, Location
from dfir_ar.errors import InvalidAddress, InvalidArgument, InvalidUsername
from dfir_ar.ids import new_id
from dfir_ar.matcher import Matcher
from dfir_ar.order import Order
from dfir_ar.parsers import AGENT_ID
from dfir_ar.rails import WhiteList
from dfir_ar.responder import Target
from dfir_ar.validate import IPAddress, IPNetwork, parse_ip, parse_network, parse_username

LEVEL_ZERO = "rule level 0 never triggers a response"
MAX_FILENAME = 4096
SRCIP_CACHE = 4096
_SrcipVerdict = tuple[IPAddress | None, str | None, str | None]


class Decision(msgspec.Struct, frozen=True, gc=False):
    """One matched binding's verdict for one alert.

    ``binding`` is the 0-based index into ``config.active_response`` (None when the alert was
    refused before matching, e.g. level 0); ``order.binding`` is the same binding 1-based, as
    config messages count. Exactly one of ``order`` and ``refused`` is set.
    """

    binding: int | None
    command: str
    order: Order | None
    refused: str | None

    @property
    def fires(self) -> bool:
        return self.order is not None


@dataclass(frozen=True, slots=True)
class _Binding:
    index: int
    ar: ActiveResponseConfig
    command: CommandConfig | None
    needs_srcip: bool
    needs_user: bool
    needs_filename: bool
    timeout: float | None
    agent_ids: tuple[str, ...]


def where(ar: ActiveResponseConfig) -> str:
    """Human text for a binding's location (``simulate``'s "where" column)."""
    if ar.location is Location.DEFINED_AGENT:
        return "agents " + ",".join(ar.agent_id)
    if ar.location is Location.SERVER:
        return f"server ({MANAGER_AGENT_ID})"
    if ar.location is Location.ALL:
        return "all agents"
    return "local"


def not_a_host(ip: IPAddress) -> str | None:
    """Why ``ip`` cannot be one attacker's address, or None. Blocking ``0.0.0.0`` or ``::`` means
    "everything" to some backends (``ip route add blackhole 0.0.0.0`` is the default route), and
    multicast or broadcast sources are forged by definition."""
    if ip.version == 4:
        # Integer tests (this runs for every new srcip): 0.0.0.0, 224.0.0.0/4, 255.255.255.255.
        value = int(ip)
        unspecified, multicast = value == 0, value >> 28 == 0xE
        broadcast = value == 0xFFFFFFFF
    else:
        unspecified, multicast, broadcast = ip.is_unspecified, ip.is_multicast, False
    if unspecified:
        return f"srcip {ip} is the unspecified address; not a host to contain"
    if multicast:
        return f"srcip {ip} is a multicast address; not a host to contain"
    if broadcast:
        return f"srcip {ip} is the broadcast address; not a host to contain"
    return None


def parse_filename(value: object) -> str:
    """A path an alert names (syscheck): absolute, no NUL or newline, no '..' component."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_FILENAME:
        raise InvalidArgument(f"filename {value!r:.80} is not an absolute path")
    if "\x00" in value or "\n" in value or "\r" in value:
        raise InvalidArgument(f"filename {value!r:.80} contains a control character")
    if ".." in value.split("/"):
        raise InvalidArgument(f"filename {value!r:.80} contains a '..' component")
    return value


class Pipeline:
    """Compiled once from a Config; ``decide`` is called per alert on the hot path. Not
    thread-safe by contract (serve calls it under one lock); its caches are plain dicts."""

    def __init__(self, config: Config, protected_networks: Sequence[IPNetwork]) -> None:
        self.config = config
        self.matcher = Matcher(config)
        white = [parse_network(w) for w in config.global_.white_list]
        self.white_list = WhiteList([*white, *protected_networks])
        bindings: list[_Binding] = []
        for index, ar in enumerate(config.active_response):
            cmd = config.command_named(ar.command)
            timeout = ar.timeout if ar.timeout else None
            if cmd is not None and not cmd.timeout_allowed:
                timeout = None
            agent_ids: tuple[str, ...] = ()
            if ar.location is Location.SERVER:
                agent_ids = (MANAGER_AGENT_ID,)
            elif ar.location is Location.DEFINED_AGENT:
                agent_ids = tuple(ar.agent_id)
            elif ar.location is Location.ALL:
                agent_ids = ("all",)
            bindings.append(
                _Binding(
                    index=index,
                    ar=ar,
                    command=cmd,
                    needs_srcip=cmd is not None and cmd.expects_srcip,
                    needs_user=cmd is not None and cmd.expects_username,
                    needs_filename=cmd is not None and "filename" in cmd.expect,
                    timeout=timeout,
                    agent_ids=agent_ids,
                )
            )
        self.bindings: tuple[_Binding, ...] = tuple(bindings)
        self._srcips: dict[str, _SrcipVerdict] = {}

    def decide(self, alert: Alert, now: float) -> list[Decision]:
        """Every matched binding's Decision, in config order; [] when nothing matched."""
        if alert.level <= 0:
            return [Decision(None, "", None, LEVEL_ZERO)]
        indexes = self.matcher.match(alert)
        if not indexes:
            return []
        srcip: IPAddress | None = None
        srcip_error: str | None = None
        listed: str | None = None
        if alert.srcip is not None:
            verdict = self._srcips.get(alert.srcip)
            if verdict is None:
                verdict = self._check_srcip(alert.srcip)
            srcip, srcip_error, listed = verdict
        out: list[Decision] = []
        for index in indexes:
            b = self.bindings[index]
            out.append(self._decide_one(b, alert, now, srcip, srcip_error, listed))
        return out

    def _check_srcip(self, text: str) -> _SrcipVerdict:
        """Parse and white-list-check one srcip text; remembered, since an attack repeats it."""
        srcip: IPAddress | None = None
        error: str | None = None
        listed: str | None = None
        try:
            srcip = parse_ip(text)
        except InvalidAddress as exc:
            error = str(exc)
        if srcip is not None:
            # 0.0.0.0, ::, multicast, broadcast: forged by definition; treated like an unparsable
            # srcip, so responses that apply the white list refuse too.
            error = not_a_host(srcip)
            if error is None and self.white_list.contains(srcip):
                net = self.white_list.covering(srcip)
                listed = f"srcip {srcip} is white-listed ({net}); nothing runs against it"
        verdict = (srcip, error, listed)
        if len(self._srcips) >= SRCIP_CACHE:
            self._srcips.clear()  # bounded: a flood of distinct values cannot grow it
        self._srcips[text] = verdict
        return verdict

    def _decide_one(
        self,
        b: _Binding,
        alert: Alert,
        now: float,
        srcip: IPAddress | None,
        srcip_error: str | None,
        listed: str | None,
    ) -> Decision:
        name = b.ar.command
        cmd = b.command
        if cmd is None:
            return Decision(b.index, name, None, f"no [[command]] named {name!r}")
        # The white list comes first and covers every response (Wazuh semantics): an alert about
        # a protected address triggers nothing unless the binding explicitly waives the check.
        if b.ar.apply_white_list:
            if srcip_error is not None:
                return Decision(b.index, name, None, f"{srcip_error}; cannot check the white list")
            if listed is not None:
                return Decision(b.index, name, None, listed)
        if b.needs_srcip:
            if srcip_error is not None:
                return Decision(b.index, name, None, srcip_error)
            if srcip is None:
                return Decision(b.index, name, None, "missing argument: the alert has no srcip")
        username: str | None = None
        if b.needs_user:
            raw_user = alert.username
            if raw_user is None:
                return Decision(b.index, name, None, "missing argument: the alert has no user")
            try:
                username = parse_username(raw_user)
            except InvalidUsername as exc:
                return Decision(b.index, name, None, str(exc))
        filename: str | None = None
        if b.needs_filename:
            if alert.filename is None:
                return Decision(b.index, name, None, "missing argument: the alert has no filename")
            try:
                filename = parse_filename(alert.filename)
            except InvalidArgument as exc:
                return Decision(b.index, name, None, str(exc))
        location = b.ar.location
        agent_ids = b.agent_ids
        if location is Location.LOCAL:
            agent = alert.agent_id
            if agent:
                if not AGENT_ID.fullmatch(agent):
                    return Decision(
                        b.index, name, None, f"agent id {agent!r:.80} is not a valid agent id"
                    )
                agent_ids = (agent,)
            # else: an OSSEC alerts.log block names its agent but carries no id; not_here
            # compares alert.agent_name with this host's name.
        order = Order(
            id=new_id(now),
            command=name,
            # A valid srcip rides along even when not expected: OSSEC-protocol scripts and the
            # evidence manifest record it.
            target=Target(
                srcip=srcip if srcip_error is None else None, username=username, filename=filename
            ),
            timeout=b.timeout,
            repeated_offenders=tuple(b.ar.repeated_offenders),
            extra_args=tuple(cmd.extra_args),
            alert=alert,
            binding=b.index + 1,
            location=location,
            agent_ids=agent_ids,
        )
        return Decision(b.index, name, order, None)


def not_here(order: Order, agent_id: str, agent_name: str = "") -> str | None:
    """Why ``order`` does not run on a local-mode host that is agent ``agent_id`` named
    ``agent_name``, or None.

    Local mode is one host: the manager (location server/all) and agent ``global.agent_id``.
    ``local`` means "the agent that produced the alert" (OSSEC/Wazuh): an alert from another agent
    in a manager's alerts.json must not block or disable an account on THIS host. An OSSEC
    alerts.log block names its agent but gives no id: it is this host only by name
    (``global.agent_name``, else the host name). Pure, shared by `serve` and `simulate` so both
    give the same answer.
    """
    if order.location in (Location.SERVER, Location.ALL):
        return None
    alert = order.alert
    if (
        order.location is Location.LOCAL and not order.agent_ids and alert is not None
        and not alert.agent_id and alert.agent_name
    ):
        if alert.agent_name == agent_name:
            return None
        return (
            f"location 'local' means agent {alert.agent_name!r:.80} (an OSSEC alert names its "
            f"agent); this local-mode host is {agent_name!r} (set global.agent_name if this "
            "host is that agent); fleet mode is not available in this build"
        )
    if order.location is Location.LOCAL and (not order.agent_ids or agent_id in order.agent_ids):
        return None
    if order.location is Location.DEFINED_AGENT and agent_id in order.agent_ids:
        return None
    agents = ",".join(order.agent_ids)
    return (
        f"location {order.location.value!r} means agent(s) {agents}; this local-mode host is "
        f'agent {agent_id} (set global.agent_id = "{order.agent_ids[0]}" if this host is that '
        "agent); fleet mode is not available in this build"
    )
