"""Alert parsers: Wazuh ``alerts.json`` lines, OSSEC ``alerts.log`` blocks, plain JSON.

Every byte here is attacker-controlled (an attacker writes the logs the alerts quote, and the HTTP
source takes alerts from the network). So each parser either returns an :class:`Alert` or raises a
:class:`MalformedAlert` whose message says what was wrong; nothing is guessed or "cleaned".

The hot path (alerts.json lines) is one msgspec decode of just the fields dfir-ar reads, a few
checks and a slotted dataclass, with the whole object kept undecoded (dfir_ar.rawalert); anything
unusual takes the exact dict path (orjson, dfir_ar.codec). No pydantic here: the engine has to
keep up with at least 0.3x the plain ``json.loads`` rate.

Refusals::

    RefusedInput
    └── MalformedAlert      not JSON, wrong shape, wrong type, unknown field (plain JSON)
        ├── OversizedAlert  longer than max_alert_bytes
        ├── NotUtf8         a byte sequence that is not UTF-8
        └── UnknownFormat   the first bytes are neither JSON nor an OSSEC alert header
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from dfir_ar import codec
from dfir_ar.alert import MANAGER_AGENT_ID, Alert, new_alert
from dfir_ar.errors import RefusedInput
from dfir_ar.rawalert import RawAlert

DEFAULT_MAX_ALERT_BYTES = 262_144  # Wazuh frequency rules carry previous_output: alerts get big
Format = Literal["wazuh", "ossec", "json"]
FORMATS: tuple[str, ...] = ("auto", "wazuh", "ossec", "json")

# Wazuh/OSSEC levels are 0-16; the config accepts up to 20, so do we.
MAX_LEVEL = 20
MAX_GROUPS = 64
# A rule id is a small positive integer; ten digits keeps int() away from huge-number DoS.
_MAX_RULE_ID_DIGITS = 10
MAX_DEPTH = 64
"""Deepest nesting of objects and arrays accepted in an alert. Real alerts nest a few levels;
every record of what was done re-encodes the alert, and an alert nested deeper than the encoder
goes (orjson: 255) must be refused here, not fail half-way through its execution."""
_ALERT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/=+-]{0,127}")
"""An alert id: logged, put in bundle manifests and in object-store metadata, so plain ASCII
with no separators or line breaks (Wazuh's are "1795334410.12345")."""


class MalformedAlert(RefusedInput):
    """The bytes are not an alert of the expected format; the message says why."""


class OversizedAlert(MalformedAlert):
    pass


class NotUtf8(MalformedAlert):
    pass


class UnknownFormat(MalformedAlert):
    pass


def excerpt(data: bytes | str, limit: int = 120) -> str:
    """A short, printable, log-safe rendering of hostile input: ASCII only, controls and
    non-ASCII escaped (look-alike letters show as \\u codes), bytes that are not UTF-8 as \\xNN."""
    # surrogateescape maps each undecodable byte to one lone surrogate U+DC80..U+DCFF.
    text = data[: limit * 4].decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    out: list[str] = []
    for ch in text[:limit]:
        code = ord(ch)
        if 0x20 <= code < 0x7F:
            out.append("\\\\" if ch == "\\" else ch)
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out) + ("..." if len(text) > limit else "")


def _check_size(data: bytes, max_bytes: int) -> None:
    """Refuse an alert over ``max_bytes`` before anything parses it, and one nested deeper
    than MAX_DEPTH (counting brackets bounds the depth from above; only a line with more
    brackets than that is measured exactly)."""
    if len(data) > max_bytes:
        raise OversizedAlert(f"alert is {len(data)} bytes; the limit is {max_bytes}")
    if len(data) > 2 * MAX_DEPTH and data.count(b"[") + data.count(b"{") > MAX_DEPTH:
        try:
            obj = codec.loads(data)
        except ValueError:
            return  # not JSON (or deeper than the decoder goes): the parse says why
        if _depth(obj) > MAX_DEPTH:
            raise MalformedAlert(f"JSON nested deeper than {MAX_DEPTH} levels")


def _depth(obj: object) -> int:
    """Nesting depth of objects and arrays, without recursion."""
    deepest = 0
    todo: list[tuple[object, int]] = [(obj, 1)]
    while todo:
        value, level = todo.pop()
        if type(value) is dict:
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in value.values())
        elif type(value) is list:
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in value)
    return deepest


def _alert_id(value: object, what: str) -> str | None:
    """None, or an id _ALERT_ID accepts; anything else refuses the alert."""
    if value is None or (type(value) is str and _ALERT_ID.fullmatch(value)):
        return value
    raise MalformedAlert(f"{what}: {excerpt(repr(value), 40)} is not an alert id (letters, "
                         "digits and ._:@/=+- only, up to 128)")


def _parse_json(data: bytes, max_bytes: int) -> Any:
    """Size check, then UTF-8 and JSON in one pass (orjson validates the UTF-8 itself); the
    precise reason is worked out only for input that fails."""
    _check_size(data, max_bytes)
    try:
        return codec.loads(data)
    except ValueError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise NotUtf8(f"byte {bad.start} is not UTF-8 (0x{data[bad.start]:02x})") from None
        if "depth limit" in str(exc):
            # A "[[[[..." bomb: refused at 1024 levels, before it costs anything.
            raise MalformedAlert("JSON nested too deeply") from None
        raise MalformedAlert(f"not valid JSON: {exc}") from None


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _wrong(what: str, expected: str, value: object) -> MalformedAlert:
    return MalformedAlert(f"{what}: expected {expected}, got {_type_name(value)} {excerpt(repr(value), 40)}")


def _rule_id(value: object, what: str) -> int:
    # Wazuh writes the id as a string ("5712"); plain JSON senders often use a number.
    if type(value) is int:
        if 0 <= value < 10**_MAX_RULE_ID_DIGITS:
            return value
        raise MalformedAlert(f"{what}: {value} is out of range")
    if isinstance(value, str):
        # isascii: int() would also accept Arabic-Indic and other Unicode digits.
        if value.isascii() and value.isdigit() and len(value) <= _MAX_RULE_ID_DIGITS:
            return int(value)
        raise MalformedAlert(f"{what}: {excerpt(value, 40)!s} is not a rule number")
    raise _wrong(what, "a rule number", value)


def _level(value: object, what: str) -> int:
    if type(value) is int and 0 <= value <= MAX_LEVEL:
        return value
    if type(value) is int:
        raise MalformedAlert(f"{what}: {value} is outside 0..{MAX_LEVEL}")
    raise _wrong(what, "an integer level", value)


def _groups(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        # OSSEC style "syslog,sshd," (plain JSON senders use it too).
        value = [g for g in value.split(",") if g]
    if not isinstance(value, list):
        raise _wrong(what, "a list of group names", value)
    if len(value) > MAX_GROUPS:
        raise MalformedAlert(f"{what}: {len(value)} groups; at most {MAX_GROUPS}")
    for g in value:
        # A comma inside a name would forge extra entries in the comma-terminated group string
        # that rules_group matches against.
        if not isinstance(g, str) or "," in g or not g:
            raise MalformedAlert(f"{what}: {excerpt(repr(g), 40)} is not a group name")
    return tuple(value)


def _opt_str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _wrong(what, "a string", value)


# Agent ids route orders (NATS subjects, file names) and reach scripts: letters, digits, '_', '-'.
# A '.', '*' or '>' would change the subject an order is published to.
AGENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _agent_id(value: object, what: str) -> str:
    # An alert naming an agent must name a valid one: "" or null would route a "local" response
    # nowhere (or, read as the manager, to the wrong host).
    if isinstance(value, str) and AGENT_ID.fullmatch(value):
        return value
    raise _wrong(what, "an agent id (letters, digits, '_', '-')", value)


def _opt_obj(value: object, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise _wrong(what, "an object", value)


_EMPTY: dict[str, Any] = {}
_STR_FIELDS = (
    "id", "timestamp", "rule.description", "agent.name", "agent.ip", "data.srcip",
    "data.srcuser", "data.dstuser", "data.filename", "location", "full_log",
)


def alert_from_wazuh(obj: object, raw: Mapping[str, Any] | None = None) -> Alert:
    """Build an Alert from a decoded alerts.json object (the shape Wazuh writes); its ``raw`` is
    ``raw`` when given (the line's RawAlert), else the object.

    Unknown keys are kept in ``raw`` and otherwise ignored: Wazuh adds fields between versions
    (``rule.mitre``, ``GeoLocation``, decoder-specific ``data.*``), so refusing them would drop
    real alerts. Every field dfir-ar reads must have the right type, or the alert is refused.

    This is the engine's hot path: the common case is checked inline with exact type tests, and
    the helpers (which build the error messages) run only when a value is unusual.
    """
    if type(obj) is not dict:
        raise _wrong("alert", "a JSON object", obj)
    rule = obj.get("rule")
    if type(rule) is not dict:
        raise _wrong("rule", "an object", rule)
    rid = rule.get("id")
    if type(rid) is str and len(rid) <= _MAX_RULE_ID_DIGITS and rid.isascii() and rid.isdigit():
        rule_id = int(rid)
    else:
        rule_id = _rule_id(rid, "rule.id")
    level = rule.get("level")
    if type(level) is not int or not 0 <= level <= MAX_LEVEL:
        level = _level(level, "rule.level")
    groups_value = rule.get("groups")
    groups: tuple[str, ...]
    if type(groups_value) is list and len(groups_value) <= MAX_GROUPS:
        for g in groups_value:
            if type(g) is not str or not g or "," in g:
                groups = _groups(groups_value, "rule.groups")
                break
        else:
            groups = tuple(groups_value)
    else:
        groups = _groups(groups_value, "rule.groups")
    agent = obj.get("agent")
    if agent is None:
        agent = _EMPTY
        agent_id = MANAGER_AGENT_ID
    elif type(agent) is dict:
        given = agent.get("id")
        agent_id = given if type(given) is str and AGENT_ID.fullmatch(given) else _agent_id(
            given, "agent.id"
        )
    else:
        raise _wrong("agent", "an object", agent)
    data = obj.get("data")
    if data is None:
        data = _EMPTY
    elif type(data) is not dict:
        raise _wrong("data", "an object", data)
    values = (
        obj.get("id"), obj.get("timestamp"), rule.get("description"), agent.get("name"),
        agent.get("ip"), data.get("srcip"), data.get("srcuser"), data.get("dstuser"),
        data.get("filename"), obj.get("location"), obj.get("full_log"),
    )
    for i, value in enumerate(values):
        if value is not None and type(value) is not str:
            raise _wrong(_STR_FIELDS[i], "a string", value)
    alert_id, timestamp, description, name, agent_ip, srcip, srcuser, dstuser, filename, \
        location, full_log = values
    alert_id = _alert_id(alert_id, "id")
    if filename is None and "syscheck" in obj:
        syscheck = _opt_obj(obj["syscheck"], "syscheck")
        filename = _opt_str(syscheck.get("path"), "syscheck.path")
    return new_alert(
        rule_id, level, groups, alert_id, timestamp, description or "", agent_id, name or "",
        agent_ip, srcip, srcuser, dstuser, filename, location or "", full_log or "",
        obj if raw is None else raw,
    )


# Plain JSON: a flat object a webhook or script can write by hand.
_PLAIN_FIELDS = frozenset(
    {
        "rule_id", "level", "groups", "id", "timestamp", "description", "agent_id",
        "agent_name", "agent_ip", "srcip", "srcuser", "dstuser", "user", "username",
        "filename", "location", "full_log",
    }
)


def alert_from_plain(obj: object) -> Alert:
    """Build an Alert from a flat JSON object (``rule_id``, ``level``, ``srcip``, ``user``...).

    This format is dfir-ar's own, so it is strict: an unknown key is refused with a suggestion,
    because a typo such as ``src_ip`` would otherwise silently disable every srcip response.
    """
    if not isinstance(obj, dict):
        raise _wrong("alert", "a JSON object", obj)
    unknown = [k for k in obj if k not in _PLAIN_FIELDS]
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(str(key), sorted(_PLAIN_FIELDS), n=1)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        raise MalformedAlert(f"unknown field {excerpt(str(key), 40)!r}{hint}")
    if "rule_id" not in obj or "level" not in obj:
        raise MalformedAlert("a plain JSON alert needs rule_id and level")
    user = _opt_str(obj.get("user"), "user")
    username = _opt_str(obj.get("username"), "username")
    dstuser = _opt_str(obj.get("dstuser"), "dstuser")
    given = [u for u in (user, username, dstuser) if u is not None]
    if len(set(given)) > 1:
        raise MalformedAlert("user, username and dstuser disagree; send one of them")
    agent_id = _agent_id(obj["agent_id"], "agent_id") if "agent_id" in obj else None
    alert = Alert(
        rule_id=_rule_id(obj.get("rule_id"), "rule_id"),
        level=_level(obj.get("level"), "level"),
        groups=_groups(obj.get("groups"), "groups"),
        id=_alert_id(obj.get("id"), "id"),
        timestamp=_opt_str(obj.get("timestamp"), "timestamp"),
        description=_opt_str(obj.get("description"), "description") or "",
        agent_id=MANAGER_AGENT_ID if agent_id is None else agent_id,
        agent_name=_opt_str(obj.get("agent_name"), "agent_name") or "",
        agent_ip=_opt_str(obj.get("agent_ip"), "agent_ip"),
        srcip=_opt_str(obj.get("srcip"), "srcip"),
        srcuser=_opt_str(obj.get("srcuser"), "srcuser"),
        dstuser=given[0] if given else None,
        filename=_opt_str(obj.get("filename"), "filename"),
        location=_opt_str(obj.get("location"), "location") or "",
        full_log=_opt_str(obj.get("full_log"), "full_log") or "",
    )
    # Scripts speaking the Wazuh protocol get the alerts.json shape, not our flat one.
    return Alert(**{**_fields(alert), "raw": alert.to_wazuh()})


def _fields(alert: Alert) -> dict[str, Any]:
    return {name: getattr(alert, name) for name in Alert.__dataclass_fields__ if name != "raw"}


# --- alerts.json lines: typed decoding ------------------------------------------------------
#
# Decoding a whole alert into dicts (orjson) and then picking a dozen fields out of it was most of
# the parse cost. msgspec decodes just those fields into Structs (type-checked in C) and skips the
# rest, still checking that the whole line is valid JSON; the object itself is kept as the line
# (RawAlert) and decoded only if something asks for it.
#
# The typed path decides only what it can decide exactly as the dict path (alert_from_wazuh over
# codec.loads) would: it either builds the same Alert or steps aside, and the dict path then
# accepts or refuses with its own message. It steps aside for every refusal (so each message
# names the field as before), for rare shapes the Structs do not describe (groups as a string, a
# non-object syscheck next to data.filename) and for what msgspec accepts but codec.loads
# refuses, since RawAlert decodes the same bytes with codec.loads later:
#
# - bytes that are not UTF-8 inside skipped values (msgspec checks only the strings it decodes),
# - numbers beyond a double (orjson refuses 1e999; msgspec's skipping does not look at values),
# - nesting deeper than orjson's 1,024 levels (msgspec's limit is the recursion limit).
#
# Checked too, and the same in both: NaN/Infinity, lone surrogate escapes, control characters,
# a BOM, trailing garbage (refused); duplicate keys (the last wins), escaped key names.


class _Rule(msgspec.Struct, gc=False):
    id: str | int
    level: int
    groups: tuple[str, ...] | None = None
    description: str | None = None


class _Agent(msgspec.Struct, gc=False):
    id: str | None = None
    name: str | None = None
    ip: str | None = None


class _Data(msgspec.Struct, gc=False):
    srcip: str | None = None
    srcuser: str | None = None
    dstuser: str | None = None
    filename: str | None = None


class _Syscheck(msgspec.Struct, gc=False):
    path: str | None = None


class _WazuhAlert(msgspec.Struct, gc=False):
    rule: _Rule
    agent: _Agent | None = None
    data: _Data | None = None
    syscheck: _Syscheck | None = None
    id: str | None = None
    timestamp: str | None = None
    location: str | None = None
    full_log: str | None = None


_DECODE = msgspec.json.Decoder(_WazuhAlert).decode

# A number beyond a double (~1.8e308) has an exponent of three or more digits, or at least 210
# integer digits (209 digits times 1e99 stays below); a number ends at "," "]" "}" or JSON
# whitespace. In a copy of the line with each digit and sign as "0", e/E as "e", those enders as
# "," and all else blank, that shows as "e000", more "0"s, "," or as a run of 210 "0"s. Text that
# looks alike ("type-1234 ") only sends the line the exact, slower way; a hex hash ("...e123")
# does not, as it ends with a quote. (re finds the literal start faster than bytes.__contains__.)
_NUMBER_SHAPES = bytes(
    0x30 if c in b"0123456789+-" else 0x65 if c in b"eE" else 0x2C if c in b",]} \t\r\n" else 0x20
    for c in range(256)
)
_BIG_EXPONENT = re.compile(rb"e0000*,").search
_DIGIT_RUN = b"0" * 210
_ORJSON_MAX_DEPTH = 1024


def _nests_deeper_than_orjson() -> bool:
    """Can msgspec decode nesting orjson refuses, at the recursion limit set now?"""
    deep = _ORJSON_MAX_DEPTH + 1
    try:
        msgspec.json.decode(b'{"x":' + b"[" * deep + b"]" * deep + b"}", type=_WazuhAlert)
    except msgspec.ValidationError:
        return True  # got past the nesting to the missing rule
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


# Python 3.11 bounds msgspec's nesting by the recursion limit (1,000 unless raised); later
# versions by a C limit of their own. The bracket count runs only where the probe (or a raised
# limit) says msgspec could go deeper, and only for lines long enough to hold 1,025 levels.
_MSGSPEC_NESTS_DEEPER = _nests_deeper_than_orjson()


def _too_deep_for_orjson(line: bytes) -> bool:
    """Might the line nest deeper than codec.loads allows, where msgspec would follow it? Checked
    before decoding: with a raised recursion limit msgspec would also recurse that deep in C.
    (Called only for lines long enough to hold 1,025 levels.)"""
    return (
        _MSGSPEC_NESTS_DEEPER or sys.getrecursionlimit() > _ORJSON_MAX_DEPTH
    ) and line.count(b"[") + line.count(b"{") > _ORJSON_MAX_DEPTH


# Valid rule ids (as written) and agent ids seen, so the common case is one set or dict lookup
# instead of a regex and int(). Bounded: hostile input could name a new id on every line.
_SEEN_MAX = 4096
_RULE_IDS: dict[str, int] = {}
_AGENT_IDS: set[str] = set()


def _typed_wazuh(line: bytes) -> Alert | None:
    """The Alert alert_from_wazuh(codec.loads(line)) would build, or None to let that decide."""
    if not line.isascii():
        try:
            line.decode("utf-8")  # msgspec checks only the strings it decodes
        except UnicodeDecodeError:
            return None
    if len(line) > 2 * _ORJSON_MAX_DEPTH and _too_deep_for_orjson(line):
        return None
    # Might the line hold a number codec.loads refuses? (See _NUMBER_SHAPES.)
    shapes = line.translate(_NUMBER_SHAPES)
    if _BIG_EXPONENT(shapes) or _DIGIT_RUN in shapes:
        return None
    try:
        alert = _DECODE(line)
    except (ValueError, RecursionError):  # msgspec's errors and UnicodeDecodeError are ValueErrors
        return None
    rule = alert.rule
    rid = rule.id
    if isinstance(rid, str):
        rule_id = _RULE_IDS.get(rid)
        if rule_id is None:
            if len(rid) > _MAX_RULE_ID_DIGITS or not rid.isascii() or not rid.isdigit():
                return None
            rule_id = int(rid)
            if len(_RULE_IDS) >= _SEEN_MAX:
                _RULE_IDS.clear()
            _RULE_IDS[rid] = rule_id
    elif 0 <= rid < 10**_MAX_RULE_ID_DIGITS:
        rule_id = rid
    else:
        return None
    level = rule.level
    if not 0 <= level <= MAX_LEVEL:
        return None
    groups = rule.groups
    if groups is None:
        groups = ()
    elif len(groups) > MAX_GROUPS:
        return None
    else:
        for g in groups:
            if not g or "," in g:
                return None
    agent = alert.agent
    if agent is None:
        agent_id, agent_name, agent_ip = MANAGER_AGENT_ID, "", None
    else:
        agent_id = agent.id  # type: ignore[assignment]  # checked next
        if agent_id not in _AGENT_IDS:
            if agent_id is None or not AGENT_ID.fullmatch(agent_id):
                return None
            if len(_AGENT_IDS) >= _SEEN_MAX:
                _AGENT_IDS.clear()
            _AGENT_IDS.add(agent_id)
        agent_name, agent_ip = agent.name or "", agent.ip
    data = alert.data
    if data is None:
        srcip = srcuser = dstuser = filename = None
    else:
        srcip, srcuser, dstuser, filename = data.srcip, data.srcuser, data.dstuser, data.filename
    if filename is None and alert.syscheck is not None:
        filename = alert.syscheck.path
    if alert.id is not None and not _ALERT_ID.fullmatch(alert.id):
        return None  # the dict path refuses it with the reason
    return new_alert(
        rule_id, level, groups, alert.id, alert.timestamp, rule.description or "", agent_id,
        agent_name, agent_ip, srcip, srcuser, dstuser, filename, alert.location or "",
        alert.full_log or "", RawAlert(line),
    )


def _dict_wazuh(obj: object, line: bytes) -> Alert:
    """alert_from_wazuh, with the object kept as a RawAlert of its line like the typed path's."""
    if type(obj) is not dict:
        raise _wrong("alert", "a JSON object", obj)
    return alert_from_wazuh(obj, RawAlert(line, obj))


def parse_wazuh_line(line: bytes, max_bytes: int = DEFAULT_MAX_ALERT_BYTES) -> Alert:
    """One line of Wazuh's alerts.json; ``raw`` is a RawAlert of the line."""
    _check_size(line, max_bytes)
    return _typed_wazuh(line) or _dict_wazuh(_parse_json(line, max_bytes), line)


def parse_plain_json(data: bytes, max_bytes: int = DEFAULT_MAX_ALERT_BYTES) -> Alert:
    """One flat JSON alert (see :func:`alert_from_plain`)."""
    return alert_from_plain(_parse_json(data, max_bytes))


def parse_json_alert(data: bytes, max_bytes: int = DEFAULT_MAX_ALERT_BYTES) -> Alert:
    """A JSON alert of either shape: Wazuh's (has a ``rule`` object) or plain (has ``rule_id``)."""
    _check_size(data, max_bytes)
    # Only an object with a "rule" object gets past the typed path: the same choice as below.
    alert = _typed_wazuh(data)
    if alert is not None:
        return alert
    obj = _parse_json(data, max_bytes)
    if isinstance(obj, dict) and "rule" in obj:
        return _dict_wazuh(obj, data)
    if isinstance(obj, dict) and "rule_id" in obj:
        return alert_from_plain(obj)
    raise MalformedAlert(
        "JSON alert has neither a rule object (Wazuh alerts.json) nor rule_id (plain JSON)"
    )


def detect_format(first_bytes: bytes) -> Format:
    """Tell a file's format from its first bytes: ``ossec``, ``wazuh`` or ``json``.

    Raises UnknownFormat when the bytes are neither an OSSEC header nor a JSON object.
    """
    head = first_bytes.lstrip()
    if head.startswith(b"** Alert "):
        return "ossec"
    if head.startswith(b"{"):
        first = head.split(b"\n", 1)[0]
        try:
            obj = codec.loads(first)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return "json" if "rule_id" in obj and "rule" not in obj else "wazuh"
        # An incomplete first line: judge by the keys we can see.
        return "json" if b'"rule_id"' in first and b'"rule"' not in first else "wazuh"
    raise UnknownFormat(
        f"cannot tell the alert format from {excerpt(head, 40)!r}: expected a JSON object "
        "(Wazuh alerts.json or plain JSON) or an OSSEC '** Alert' header"
    )


# --- OSSEC alerts.log ---------------------------------------------------------------------------

_HEADER = re.compile(r"^\*\* Alert (\d{1,12}\.\d{1,12}):[^-]*- ?(.*)$")
# "2016 Apr 21 13:09:51 (agent01) 198.51.100.20->/var/log/auth.log" (alert from an agent)
# "2016 Apr 21 13:09:51 manager->/var/log/auth.log"                (alert from the manager)
_ORIGIN = re.compile(
    r"^(\d{4} \w{3} \d{1,2} \d{2}:\d{2}:\d{2}) "
    r"(?:\((?P<agent>[^()]{1,128})\) (?P<aip>\S{1,64})|(?P<host>[^\s>]{1,256}))->(?P<loc>.*)$"
)
_RULE = re.compile(r"^Rule: (\d{1,10}) \(level (\d{1,2})\) -> '(.*)'\s*$")
_FIELDS = {"Src IP": "srcip", "User": "dstuser", "Src User": "srcuser", "File": "filename"}
_FIELD_LINE = re.compile(r"^(Src IP|Src Port|Dst IP|Dst Port|User|Src User|File|Src Location): ?(.*)$")


def alert_from_ossec_block(lines: list[str]) -> Alert:
    """Parse one alerts.log block (header, origin, rule, optional fields, log lines).

    OSSEC's block names the agent, not its id, so an alert from an agent carries
    ``agent_id = ""`` and the name; an alert from the manager itself carries ``"000"``.
    """
    if len(lines) < 3:
        raise MalformedAlert(f"OSSEC alert block has {len(lines)} line(s); needs at least 3")
    head = _HEADER.match(lines[0])
    if head is None:
        raise MalformedAlert(f"not an OSSEC alert header: {excerpt(lines[0], 60)!r}")
    origin = _ORIGIN.match(lines[1])
    if origin is None:
        raise MalformedAlert(f"OSSEC alert: bad date/agent/location line {excerpt(lines[1], 60)!r}")
    rule = _RULE.match(lines[2])
    if rule is None:
        raise MalformedAlert(f"OSSEC alert: bad 'Rule:' line {excerpt(lines[2], 60)!r}")
    groups = _groups(head.group(2), "groups")
    fields: dict[str, str] = {}
    i = 3
    while i < len(lines) - 1:  # the last line is the logged text (full_log), never a field
        m = _FIELD_LINE.match(lines[i])
        if m is None:
            break
        key = _FIELDS.get(m.group(1))
        if key is not None:
            if key in fields:
                raise MalformedAlert(f"OSSEC alert: {m.group(1)!r} given twice")
            fields[key] = m.group(2).strip()
        i += 1
    agent = origin.group("agent")
    agent_ip = origin.group("aip")
    return Alert(
        rule_id=_rule_id(rule.group(1), "Rule"),
        level=_level(int(rule.group(2)), "level"),
        groups=groups,
        id=head.group(1),
        timestamp=origin.group(1),
        description=rule.group(3),
        agent_id="" if agent is not None else MANAGER_AGENT_ID,
        agent_name=agent if agent is not None else (origin.group("host") or ""),
        # Wazuh writes "(agent) any->..." when it does not know the agent's address.
        agent_ip=None if agent_ip == "any" else agent_ip,
        srcip=fields.get("srcip") or None,
        srcuser=fields.get("srcuser") or None,
        dstuser=fields.get("dstuser") or None,
        filename=fields.get("filename") or None,
        location=origin.group("loc"),
        full_log="\n".join(lines[i:]),
    )


@dataclass(frozen=True, slots=True)
class Parsed:
    """What a framing parser yields: an alert or the refusal, and where the record ended."""

    item: Alert | MalformedAlert
    end: int
    """Offset just after the record (the cursor position after this alert)."""
    raw: bytes = b""
    """The record's first bytes, for the refusal log line."""


class OssecBlockParser:
    """Turn alerts.log lines into alerts: a block runs from ``** Alert`` to a blank line.

    Feed complete lines (with their newline) and the offset where each ends; a block ends at a
    blank line, or just before the next header when a writer left the blank line out. A block
    over ``max_bytes`` is refused whole, without keeping its lines. Text outside any block is
    refused line by line, so a reader cannot be made to skip alerts by a stray line.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_ALERT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lines: list[bytes] = []
        self._size = 0
        self._open = False
        self._oversized = False
        self._last_end = 0

    def feed(self, line: bytes, end: int = 0) -> list[Parsed]:
        out: list[Parsed] = []
        body = line.rstrip(b"\r\n")
        is_header = body.startswith(b"** Alert ")
        if self._open and is_header:
            out.append(self._finish(self._last_end))
        if is_header:
            self._open = True
            self._lines = [body]
            self._size = len(body)
            self._oversized = self._size > self.max_bytes
        elif self._open:
            if not body.strip():
                out.append(self._finish(end))
            else:
                self._size += len(line)
                if self._size > self.max_bytes:
                    self._oversized = True
                    self._lines = self._lines[:1]
                elif not self._oversized:
                    self._lines.append(body)
        elif body.strip():
            err = MalformedAlert(f"text outside an OSSEC alert block: {excerpt(body, 60)!r}")
            out.append(Parsed(err, end, body[:200]))
        self._last_end = end
        return out

    def flush(self, end: int = 0) -> list[Parsed]:
        """End of a finite input: a block without its closing blank line still counts."""
        if self._open:
            return [self._finish(end)]
        return []

    @property
    def pending(self) -> bool:
        return self._open

    def poison(self) -> None:
        """A line of the open block was too long to keep: refuse the whole block at its end."""
        if self._open:
            self._oversized = True
            self._size = max(self._size, self.max_bytes + 1)
            self._lines = self._lines[:1]

    def _finish(self, end: int) -> Parsed:
        lines, oversized, size = self._lines, self._oversized, self._size
        self._lines, self._size, self._open, self._oversized = [], 0, False, False
        first = lines[0] if lines else b""
        if oversized:
            return Parsed(
                OversizedAlert(f"OSSEC alert block is over {self.max_bytes} bytes ({size}+)"),
                end,
                first[:200],
            )
        try:
            text = [ln.decode("utf-8") for ln in lines]
        except UnicodeDecodeError as exc:
            return Parsed(NotUtf8(f"OSSEC alert block is not UTF-8 ({exc.reason})"), end, first[:200])
        try:
            return Parsed(alert_from_ossec_block(text), end, first[:200])
        except MalformedAlert as exc:
            return Parsed(exc, end, first[:200])


def parse_ossec_text(data: bytes, max_bytes: int = DEFAULT_MAX_ALERT_BYTES) -> list[Parsed]:
    """Parse a whole alerts.log excerpt (a test fixture, a POSTed body)."""
    parser = OssecBlockParser(max_bytes)
    out: list[Parsed] = []
    pos = 0
    for line in data.splitlines(keepends=True):
        pos += len(line)
        out.extend(parser.feed(line, pos))
    out.extend(parser.flush(pos))
    return out
