"""``dfir-ar wazuh-ar`` as Wazuh's execd runs it: a real process under a Wazuh-like
``active-response/bin/``, one JSON line on stdin, the check_keys handshake on stdout, the effect
(a private hosts.deny), the saved state, the delete in a new process, and the logs."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dfir_ar.arlog import read_audit
from dfir_ar.cli.wazuh_ar import (
    build_target,
    message_from_ossec_argv,
    plugin_from_name,
    split_own_args,
    state_path,
)
from dfir_ar.config.models import CommandConfig, Protocol
from dfir_ar.errors import InvalidAddress, InvalidArgument, UsageError
from dfir_ar.responder import Request, ResponderContext, Target
from responders.external import AlreadyActive, ExternalScript

DFIR_AR = str(Path(sys.executable).parent / "dfir-ar")
ATTACKER = "203.0.113.7"


@dataclass
class WazuhHome:
    home: Path
    bin: Path
    logs: Path
    config: Path
    state: Path
    hosts_deny: Path
    store: Path
    audit_dir: Path

    def link(self, name: str) -> Path:
        path = self.bin / name
        path.symlink_to(DFIR_AR)
        return path

    @property
    def ar_log(self) -> list[str]:
        path = self.logs / "active-responses.log"
        return path.read_text().splitlines() if path.exists() else []

    def deny_lines(self) -> list[str]:
        return self.hosts_deny.read_text().splitlines() if self.hosts_deny.exists() else []


@pytest.fixture
def wazuh(tmp_path: Path) -> WazuhHome:
    home = tmp_path / "ossec"
    (home / "active-response" / "bin").mkdir(parents=True)
    (home / "logs").mkdir()
    rules = tmp_path / "rules.yar"
    rules.write_text('rule planted_marker { strings: $a = "DFIR-AR-PLANTED-MARKER" condition: $a }\n')
    w = WazuhHome(
        home=home,
        bin=home / "active-response" / "bin",
        logs=home / "logs",
        config=tmp_path / "dfir-ar.toml",
        state=tmp_path / "state",
        hosts_deny=tmp_path / "hosts.deny",
        store=tmp_path / "store",
        audit_dir=tmp_path / "log",
    )
    w.audit_dir.mkdir()
    w.config.write_text(
        f"""
[global]
state_dir = "{w.state}"
log_dir = "{w.audit_dir}"
white_list = ["198.51.100.10", "2001:db8:1::/48"]
agent_id = "001"

[responders.host-deny]
path = "{w.hosts_deny}"

[collectors.yara]
rules = ["{rules}"]

[evidence]
store = "file://{w.store}"
"""
    )
    return w


def message(command: str = "add", srcip: object = ATTACKER, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"srcip": srcip} if srcip is not None else {}
    data.update(extra.pop("data", {}))
    return {
        "version": 1,
        "origin": {"name": "node01", "module": "wazuh-execd"},
        "command": command,
        "parameters": {
            "extra_args": extra.pop("extra_args", []),
            "alert": {
                "timestamp": "2026-11-22T08:00:00.000+0000",
                "rule": {"level": 10, "id": "5712", "description": "brute force", "groups": ["sshd"]},
                "agent": {"id": "001", "name": "web01"},
                "id": "1763798400.1234",
                "location": "/var/log/auth.log",
                "data": data,
            },
            "program": extra.pop("program", "active-response/bin/dfir-ar-host-deny"),
        },
    }


class Execd:
    """Drive one wazuh-ar process the way execd does, with every wait bounded."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()

    def send(self, data: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(data).encode() + b"\n")
        self.proc.stdin.flush()

    def read_line(self, timeout: float = 20) -> bytes:
        buf = b""
        end = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            ready, _, _ = select.select([self._out], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise AssertionError(f"no line from wazuh-ar within {timeout}s (got {buf!r})")
            chunk = os.read(self._out, 1)
            if not chunk:
                return buf
            buf += chunk
        return buf

    def finish(self, timeout: float = 30, *, keep_stdin: bool = False) -> tuple[int, bytes, bytes]:
        """Wait for exit; ``keep_stdin`` waits with stdin still open, as execd leaves it."""
        try:
            if keep_stdin:
                self.proc.wait(timeout=timeout)
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, out, err


@pytest.fixture
def execd_env(wazuh: WazuhHome) -> Iterator[dict[str, str]]:
    yield {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DFIR_AR_CONFIG": str(wazuh.config)}


def run_once(
    wazuh: WazuhHome, env: dict[str, str], argv: list[str], msg: dict[str, Any], answer: str | None
) -> tuple[int, list[dict[str, Any]], bytes]:
    """One execd run; returns (exit status, the protocol messages wazuh-ar wrote, stderr)."""
    execd = Execd(argv, wazuh.home, env)
    execd.send(msg)
    seen: list[dict[str, Any]] = []
    if answer is not None:
        line = execd.read_line()
        check = json.loads(line)
        seen.append(check)
        execd.send({**check, "command": answer})
    code, out, err = execd.finish()
    seen.extend(json.loads(x) for x in out.splitlines() if x.strip())
    return code, seen, err


def test_symlinked_host_deny_add_handshake_then_delete(wazuh: WazuhHome, execd_env: dict[str, str]) -> None:
    wazuh.link("dfir-ar-host-deny")
    argv = ["active-response/bin/dfir-ar-host-deny"]  # as execd runs it, from the Wazuh home
    code, seen, err = run_once(wazuh, execd_env, argv, message(), "continue")
    assert code == 0, err
    assert seen == [
        {
            "version": 1,
            "origin": {"name": "dfir-ar-host-deny", "module": "active-response"},
            "command": "check_keys",
            "parameters": {"keys": [ATTACKER]},
        }
    ]
    assert wazuh.deny_lines() == [f"ALL: {ATTACKER}"]
    saved = state_path(wazuh.state, "host-deny", ATTACKER)
    assert json.loads(saved.read_text())["key"] == ATTACKER
    assert saved.stat().st_mode & 0o077 == 0

    code, seen, err = run_once(wazuh, execd_env, argv, message("delete"), None)
    assert code == 0, err
    assert seen == []  # no handshake on delete, as Wazuh's own scripts
    assert wazuh.deny_lines() == []
    assert not saved.exists()

    log = wazuh.ar_log
    tail = [line.split(": ", 1)[1] for line in log]
    assert all(" active-response/bin/dfir-ar-host-deny: " in line for line in log)
    assert tail[0] == "Starting" and json.loads(tail[1])["command"] == "add"
    assert json.loads(tail[2])["command"] == "check_keys"
    assert tail[3] == "Ended"
    assert tail[4:] == ["Starting", tail[5], "Ended"] and json.loads(tail[5])["command"] == "delete"
    audit = read_audit(wazuh.audit_dir / "audit.jsonl")
    assert [(a["action"], a["outcome"], a["exit_status"]) for a in audit] == [
        ("add", "ok", 0),
        ("delete", "ok", 0),
    ]
    assert audit[0]["srcip"] == ATTACKER and audit[0]["rule_id"] == 5712


def test_abort_leaves_everything_as_is(wazuh: WazuhHome, execd_env: dict[str, str]) -> None:
    wazuh.link("dfir-ar-host-deny")
    code, seen, _ = run_once(wazuh, execd_env, ["active-response/bin/dfir-ar-host-deny"], message(), "abort")
    assert code == 0
    assert seen[0]["command"] == "check_keys"
    assert wazuh.deny_lines() == []
    assert wazuh.ar_log[-1].endswith(": Aborted")
    assert not state_path(wazuh.state, "host-deny", ATTACKER).exists()


def test_message_and_answer_arriving_together(wazuh: WazuhHome, execd_env: dict[str, str]) -> None:
    """Both lines in one write (a here-document by hand): the answer must not be lost."""
    check = {
        "version": 1,
        "origin": {"name": "dfir-ar-host-deny", "module": "active-response"},
        "command": "continue",
        "parameters": {"keys": [ATTACKER]},
    }
    done = subprocess.run(
        [DFIR_AR, "wazuh-ar", "--plugin", "host-deny", "--handshake-timeout", "5"],
        input=(json.dumps(message()) + "\n" + json.dumps(check) + "\n").encode(),
        capture_output=True,
        env=execd_env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["command"] == "check_keys"
    assert wazuh.deny_lines() == [f"ALL: {ATTACKER}"]


def test_no_answer_to_check_keys_does_nothing(wazuh: WazuhHome, execd_env: dict[str, str]) -> None:
    argv = [DFIR_AR, "wazuh-ar", "--plugin", "host-deny", "--handshake-timeout", "1"]
    execd = Execd(argv, wazuh.home, execd_env)
    execd.send(message())
    assert json.loads(execd.read_line())["command"] == "check_keys"
    start = time.monotonic()
    code, _, err = execd.finish(keep_stdin=True)
    assert time.monotonic() - start < 10
    assert code == 5 and b"did not answer check_keys within 1s" in err
    assert wazuh.deny_lines() == []


@pytest.mark.parametrize(
    ("srcip", "reason"),
    [
        ("203.0.113.7; rm -rf /", b"not a dotted-quad"),
        ("127.1", b"not a dotted-quad"),
        (["203.0.113.7"], b"not a string"),
        ("198.51.100.10", b"white-listed"),
        ("2001:db8:1::5", b"white-listed"),
        ("127.0.0.1", b"white-listed"),
        (None, b"no data.srcip"),
    ],
)
def test_bad_or_protected_srcip_refused_before_any_handshake(
    srcip: object, reason: bytes, wazuh: WazuhHome, execd_env: dict[str, str]
) -> None:
    argv = [DFIR_AR, "wazuh-ar", "--plugin", "host-deny"]
    code, seen, err = run_once(wazuh, execd_env, argv, message(srcip=srcip), None)
    assert code == 3, err
    assert reason in err
    assert seen == []
    assert wazuh.deny_lines() == []
    audit = read_audit(wazuh.audit_dir / "audit.jsonl")
    assert audit[-1]["outcome"] == "refused"


def test_delete_runs_even_if_the_address_was_white_listed_after_the_add(
    wazuh: WazuhHome, execd_env: dict[str, str]
) -> None:
    argv = [DFIR_AR, "wazuh-ar", "--plugin", "host-deny"]
    assert run_once(wazuh, execd_env, argv, message(), "continue")[0] == 0
    assert wazuh.deny_lines() == [f"ALL: {ATTACKER}"]
    text = wazuh.config.read_text().replace('"198.51.100.10"', f'"198.51.100.10", "{ATTACKER}"')
    wazuh.config.write_text(text)
    assert run_once(wazuh, execd_env, argv, message(), None)[0] == 3  # a new add: refused
    code, _, err = run_once(wazuh, execd_env, argv, message("delete"), None)
    assert code == 0, err
    assert wazuh.deny_lines() == []


def test_plugin_named_in_extra_args_and_unknown_plugin(wazuh: WazuhHome, execd_env: dict[str, str]) -> None:
    argv = [DFIR_AR, "wazuh-ar"]
    msg = message(extra_args=["--plugin", "host-deny"])
    code, seen, err = run_once(wazuh, execd_env, argv, msg, "continue")
    assert code == 0, err
    assert seen[0]["parameters"]["keys"] == [ATTACKER]
    assert wazuh.deny_lines() == [f"ALL: {ATTACKER}"]

    code, _, err = run_once(wazuh, execd_env, argv, message(extra_args=["--plugin=host-denny"]), None)
    assert code == 2 and b'did you mean "host-deny"' in err

    code, _, err = run_once(wazuh, execd_env, argv, message(), None)
    assert code == 2 and b"cannot tell which plug-in" in err


def test_garbage_input_refused(wazuh: WazuhHome, execd_env: dict[str, str]) -> None:
    for payload, reason in (
        (b"not json\n", b"not JSON"),
        (b'{"version":2,"command":"add"}\n', b"version 2"),
        (b'{"version":1,"command":"check_keys"}\n', b"expected one of add, delete"),
        (b"", b"stdin is empty"),
    ):
        done = subprocess.run(
            [DFIR_AR, "wazuh-ar", "--plugin", "host-deny"],
            input=payload,
            capture_output=True,
            env=execd_env,
            timeout=30,
            check=False,
        )
        assert done.returncode == 3, done.stderr
        assert reason in done.stderr
        assert done.stdout == b""


def test_driven_through_seam_d_by_dfir_ars_own_execd_side(wazuh: WazuhHome, tmp_path: Path) -> None:
    """The tiny-wrapper install, run by responders.external: both ends of the protocol are ours,
    and the keys wazuh-ar reports are the keys the engine's ledger uses."""
    wrapper = wazuh.bin / "dfir-ar-host-deny"
    wrapper.write_text(f"#!/bin/sh\nexec {DFIR_AR} wazuh-ar -c {wazuh.config} --plugin host-deny\n")
    wrapper.chmod(0o750)
    active: set[str] = set()
    asked: list[str] = []

    def key_active(key: str) -> bool:
        asked.append(key)
        return key in active

    script = ExternalScript.for_command(
        CommandConfig(name="dfir-deny", executable="dfir-ar-host-deny", protocol=Protocol.WAZUH),
        wazuh.bin,
        ResponderContext(state_dir=tmp_path),
        key_active,
        default_deadline=30,
    )
    request = Request(command="dfir-deny", target=Target(srcip=ipaddress.ip_address("2001:db8::66")))
    state = script.add(request)
    assert state["keys"] == ["2001:db8::66"] == asked
    assert script.key(request) == "2001:db8::66"
    assert wazuh.deny_lines() == ["ALL: [2001:db8::66]"]
    active.add("2001:db8::66")
    with pytest.raises(AlreadyActive):
        script.add(request)
    assert wazuh.deny_lines() == ["ALL: [2001:db8::66]"]
    script.delete(request, state)
    assert wazuh.deny_lines() == []


def test_collector_seals_and_uploads_a_bundle(
    wazuh: WazuhHome, execd_env: dict[str, str], tmp_path: Path
) -> None:
    scanned = tmp_path / "scanned"
    scanned.mkdir()
    (scanned / "dropper.bin").write_bytes(b"xx DFIR-AR-PLANTED-MARKER xx")
    msg = message(
        extra_args=["--plugin", "yara", "--path", str(scanned), "--memory", "none"],
        program="active-response/bin/dfir-ar-yara",
    )
    code, seen, err = run_once(
        wazuh, execd_env, [DFIR_AR, "wazuh-ar", "--foreground", "--log-dir", str(wazuh.logs)], msg, None
    )
    assert code == 0, err
    assert seen == []  # a collector is stateless: no check_keys
    manifests = list(wazuh.store.rglob("*.manifest.json"))
    bundles = list(wazuh.store.rglob("*.tar.zst"))
    assert len(manifests) == 1 and len(bundles) == 1, err
    manifest = json.loads(manifests[0].read_text())
    assert manifest["trigger"]["srcip"] == ATTACKER
    assert manifest["trigger"]["rule_id"] == 5712
    # <store>/<agent_id>/<YYYY>/<MM>/<DD>/<bundle>
    assert bundles[0].relative_to(wazuh.store).parts[0] == "001"
    from dfir_ar.evidence.verify import verify_bundle

    report = verify_bundle(bundles[0], None)
    assert report.ok, report.problems
    assert any("Uploaded 1 bundle" in line for line in wazuh.ar_log)


def test_collector_detaches_so_execd_is_not_blocked(
    wazuh: WazuhHome, execd_env: dict[str, str], tmp_path: Path
) -> None:
    scanned = tmp_path / "scanned"
    scanned.mkdir()
    (scanned / "a.txt").write_bytes(b"DFIR-AR-PLANTED-MARKER")
    msg = message(extra_args=["--plugin", "yara", "--path", str(scanned), "--memory", "none"])
    start = time.monotonic()
    code, _, err = run_once(wazuh, execd_env, [DFIR_AR, "wazuh-ar", "--log-dir", str(wazuh.logs)], msg, None)
    assert code == 0, err
    assert any("Detached: collection" in line for line in wazuh.ar_log)
    deadline = time.monotonic() + 30
    while not list(wazuh.store.rglob("*.manifest.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(wazuh.store.rglob("*.manifest.json")), wazuh.ar_log
    assert time.monotonic() - start < 30


# -- pure parts ------------------------------------------------------------------------------


def test_plugin_from_invocation_name() -> None:
    assert plugin_from_name("/var/ossec/active-response/bin/dfir-ar-firewall-drop") == "firewall-drop"
    assert plugin_from_name("active-response/bin/host-deny") == "host-deny"
    assert plugin_from_name("/usr/local/bin/dfir-ar") is None
    assert plugin_from_name("/usr/bin/python3") is None
    assert plugin_from_name("firewall-drop.sh") is None
    assert plugin_from_name("/var/ossec/active-response/bin/dfir-ar-wazuh-ar") is None


def test_generic_link_takes_the_plugin_from_extra_args(wazuh: WazuhHome, execd_env: dict[str, str]) -> None:
    wazuh.link("dfir-ar-wazuh-ar")
    # disable-account would refuse this alert (no data.dstuser): a safe way to see which ran.
    wazuh.link("dfir-ar-disable-account")
    msg = message(extra_args=["--plugin", "host-deny"])
    for link in ("dfir-ar-wazuh-ar", "dfir-ar-disable-account"):  # extra_args beat the name
        code, seen, err = run_once(wazuh, execd_env, [f"active-response/bin/{link}"], msg, "continue")
        assert code == 0, err
        assert seen[0]["parameters"]["keys"] == [ATTACKER]
        assert wazuh.deny_lines() == [f"ALL: {ATTACKER}"]
        code, _, err = run_once(
            wazuh,
            execd_env,
            [f"active-response/bin/{link}"],
            message("delete", extra_args=["--plugin", "host-deny"]),
            None,
        )
        assert code == 0, err
        assert wazuh.deny_lines() == []


def test_split_own_args() -> None:
    own = split_own_args(["--plugin", "pcap", "--duration", "5"])
    assert (own.plugin, own.timeout, own.rest) == ("pcap", None, ("--duration", "5"))
    own = split_own_args(["--plugin=yara", "--timeout=660"])
    assert (own.plugin, own.timeout, own.rest) == ("yara", 660.0, ())
    assert split_own_args(["-v"]).rest == ("-v",)
    for bad in (["--plugin"], ["--timeout", "soon"], ["--timeout", "-5"], ["--timeout=nan"]):
        with pytest.raises(InvalidArgument):
            split_own_args(bad)


def test_build_target_validates_expected_and_drops_bad_extras() -> None:
    alert = {"data": {"srcip": "::ffff:203.0.113.9", "dstuser": "x y"}}
    target, notes = build_target(alert, ["srcip"])
    assert str(target.srcip) == "203.0.113.9" and target.username is None
    assert notes and "username" in notes[0]
    with pytest.raises(InvalidAddress):
        build_target({"data": {"srcip": "1.2.3.4.5"}}, ["srcip"])
    target, _ = build_target({"data": {"dstuser": "alice"}}, ["username"])
    assert target.username == "alice"


def test_ossec_argv_protocol_through_a_symlink(wazuh: WazuhHome, execd_env: dict[str, str]) -> None:
    """OSSEC's execd (and Wazuh < 4.2) run scripts with positional arguments and no stdin."""
    wazuh.link("dfir-ar-host-deny")
    argv = ["active-response/bin/dfir-ar-host-deny"]
    fields = ["-", "2001:db8::9", "1763798400.1", "5712", "(web01) 198.51.100.5->sshd", "-"]
    for action, expected in (("add", ["ALL: [2001:db8::9]"]), ("delete", [])):
        done = subprocess.run(
            [*argv, action, *fields],
            cwd=wazuh.home,
            env=execd_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == b""  # no check_keys: OSSEC reads nothing back
        assert wazuh.deny_lines() == expected
    assert wazuh.ar_log[1].endswith(
        '"command":"add","parameters":{"extra_args":[],"alert":'
        '{"data":{"srcip":"2001:db8::9"},"id":"1763798400.1",'
        '"rule":{"id":"5712","level":0},'
        '"location":"(web01) 198.51.100.5->sshd"},'
        '"program":"active-response/bin/dfir-ar-host-deny"}}'
    )


def test_ossec_argv_protocol_driven_by_external_script(wazuh: WazuhHome, tmp_path: Path) -> None:
    """dfir-ar's OSSEC-protocol execd side running dfir-ar's script side: add, then delete with
    the same arguments."""
    wrapper = wazuh.bin / "dfir-deny.sh"
    wrapper.write_text(f'#!/bin/sh\nexec {DFIR_AR} wazuh-ar -c {wazuh.config} --plugin host-deny "$@"\n')
    wrapper.chmod(0o750)
    script = ExternalScript.for_command(
        CommandConfig(name="deny", executable="dfir-deny.sh", protocol=Protocol.OSSEC),
        wazuh.bin,
        ResponderContext(state_dir=tmp_path),
        lambda key: False,
        default_deadline=30,
    )
    request = Request(command="deny", target=Target(srcip=ipaddress.ip_address(ATTACKER)))
    state = script.add(request)
    assert wazuh.deny_lines() == [f"ALL: {ATTACKER}"]
    script.delete(request, state)
    assert wazuh.deny_lines() == []


def test_message_from_ossec_argv() -> None:
    msg = message_from_ossec_argv(
        ["add", "alice", "203.0.113.5", "1.2", "5712", "/var/log/secure", "-", "--quiet"], "p"
    )
    assert msg.command == "add" and msg.parameters.extra_args == ["--quiet"]
    assert msg.parameters.alert == {
        "data": {"srcip": "203.0.113.5", "dstuser": "alice"},
        "id": "1.2",
        "rule": {"id": "5712", "level": 0},
        "location": "/var/log/secure",
    }
    short = message_from_ossec_argv(["delete", "-", "203.0.113.5"], "")
    assert short.parameters.alert == {"data": {"srcip": "203.0.113.5"}}
    for bad in ([], ["list"], ["--help"]):
        with pytest.raises(UsageError):
            message_from_ossec_argv(bad, "")
