"""Read an OSSEC/Wazuh ``ossec.conf`` as is: its ``<command>``, ``<active-response>`` and
``<global><white_list>`` blocks become the same dict the TOML loader builds.

The file is the admin's, not an attacker's, but it is still parsed without entity expansion
surprises: ElementTree does not fetch external entities.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from dfir_ar.errors import ConfigError

_YES = {"yes", "true", "1", "on"}


def _text(el: ET.Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _split(value: str) -> list[str]:
    return [v for v in re.split(r"[,\s]+", value) if v]


def parse_ossec_conf(path: Path, text: str) -> dict[str, Any]:
    """Return a raw config dict (same shape as the TOML) from ossec.conf text."""
    # ossec.conf may hold several <ossec_config> roots and an XML declaration: wrap it.
    body = re.sub(r"<\?xml[^>]*\?>", "", text)
    try:
        root = ET.fromstring(f"<dfir_ar_root>{body}</dfir_ar_root>")  # noqa: S314 - the admin's file
    except ET.ParseError as exc:
        line, col = exc.position
        raise ConfigError(f"{path}: line {line}, column {col}: not well-formed XML ({exc})") from None

    white: list[str] = []
    for tag in ("white_list", "allow_list"):
        for el in root.iter(tag):
            white.extend(_split(_text(el)))

    commands: list[dict[str, Any]] = []
    for i, el in enumerate(root.iter("command"), 1):
        if el.find("name") is None:  # <command> inside <localfile> is a different thing
            continue
        cmd: dict[str, Any] = {"name": _text(el.find("name"))}
        if not cmd["name"]:
            raise ConfigError(f"{path}: <command> #{i}: <name> is empty; give the command a name")
        executable = _text(el.find("executable"))
        if not executable:
            raise ConfigError(
                f"{path}: <command> {cmd['name']!r}: missing <executable>; "
                "name the script in active-response/bin (e.g. firewall-drop)"
            )
        extra = _text(el.find("extra_args")).split()
        cmd["executable"], extra = _native_executable(executable, extra)
        if extra:
            cmd["extra_args"] = extra
        expect = _text(el.find("expect"))
        if expect:
            cmd["expect"] = [("username" if e == "user" else e) for e in _split(expect)]
        ta = _text(el.find("timeout_allowed"))
        if ta:
            cmd["timeout_allowed"] = ta.lower() in _YES
        commands.append(cmd)

    responses: list[dict[str, Any]] = []
    for el in root.iter("active-response"):
        command = _text(el.find("command"))
        if not command:
            # An <active-response> with only <disabled> or <ca_store> is agent-side settings.
            continue
        ar: dict[str, Any] = {"command": command}
        for key in ("location", "rules_group"):
            value = _text(el.find(key))
            if value:
                ar[key] = value
        agent_id = _text(el.find("agent_id"))
        if agent_id:
            ar["agent_id"] = _split(agent_id)
        for key in ("level", "timeout"):
            value = _text(el.find(key))
            if value:
                ar[key] = _int(path, command, key, value)
        rules_id = _text(el.find("rules_id"))
        if rules_id:
            ar["rules_id"] = [_int(path, command, "rules_id", v) for v in _split(rules_id)]
        ro = _text(el.find("repeated_offenders"))
        if ro:
            ar["repeated_offenders"] = [_int(path, command, "repeated_offenders", v) for v in _split(ro)]
        disabled = _text(el.find("disabled"))
        if disabled:
            ar["disabled"] = disabled.lower() in _YES
        responses.append(ar)

    raw: dict[str, Any] = {"command": commands, "active_response": responses}
    if white:
        raw["global"] = {"white_list": white}
    return raw


_BUILTIN_SCRIPTS = {
    "firewall-drop.sh": "firewall-drop",
    "host-deny.sh": "host-deny",
    "route-null.sh": "route-null",
    "disable-account.sh": "disable-account",
}


def _native_executable(executable: str, extra_args: list[str]) -> tuple[str, list[str]]:
    """Map what an ossec.conf names onto dfir-ar's plug-ins where it means one.

    OSSEC names its scripts ``firewall-drop.sh``; a Wazuh install using dfir-ar on its agents
    (examples/wazuh) names ``dfir-ar-<plugin>`` links, or ``dfir-ar-wazuh-ar`` with
    ``--plugin NAME`` in extra_args. Anything else stays a script in active_response_dir.
    """
    if executable == "dfir-ar-wazuh-ar" and "--plugin" in extra_args:
        i = extra_args.index("--plugin")
        if i + 1 < len(extra_args):
            return extra_args[i + 1], extra_args[:i] + extra_args[i + 2 :]
    if executable.startswith("dfir-ar-") and executable != "dfir-ar-wazuh-ar":
        return executable.removeprefix("dfir-ar-"), extra_args
    return _BUILTIN_SCRIPTS.get(executable, executable), extra_args


def _int(path: Path, command: str, key: str, value: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise ConfigError(
            f"{path}: <active-response> for {command!r}: <{key}> {value!r} is not a whole number"
        ) from None
