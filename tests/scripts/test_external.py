"""External scripts run unchanged: the OSSEC argv protocol, the Wazuh JSON protocol with its
check_keys handshake, the deadline that kills a hanging script's whole group, and strict
resolution inside active_response_dir. Every script here is a real process."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from dfir_ar.config.models import CommandConfig
from dfir_ar.errors import DeadlineExceeded, ExecutionError, InvalidArgument
from dfir_ar.responder import Request, ResponderContext, Target
from responders.external import (
    AlreadyActive,
    ExternalScript,
    ScriptRefused,
    ossec_location,
    resolve_script,
)
from tests.scripts.conftest import (
    ALERT_ID,
    ATTACKER,
    LOCATION,
    ScriptWriter,
    make_responder,
    request_for,
)

OSSEC_SCRIPT = """#!/bin/sh
# Written like OSSEC's firewall-drop.sh: positional arguments, '-' for missing values.
ACTION=$1
LOG={log}
for arg in "$@"; do printf '%s\\n' "$arg"; done > "$LOG/argv.$ACTION"
pwd > "$LOG/cwd.$ACTION"
env | cut -d= -f1 | sort > "$LOG/env.$ACTION"
exit 0
"""

# Wazuh's documented custom active response template, in Python: read one line, send
# check_keys on add, read execd's answer, act or stop.
WAZUH_PY_SCRIPT = """#!/usr/bin/python3
import json, sys
LOG = {log!r}
line = sys.stdin.readline()
msg = json.loads(line)
cmd = msg["command"]
with open(LOG + "/stdin." + cmd, "w") as f:
    f.write(line)
if cmd == "add":
    keys = [msg["parameters"]["alert"]["data"]["srcip"]]
    out = {{"version": 1, "origin": {{"name": sys.argv[0], "module": "active-response"}},
           "command": "check_keys", "parameters": {{"keys": keys}}}}
    print(json.dumps(out), flush=True)
    answer = sys.stdin.readline()
    with open(LOG + "/answer", "w") as f:
        f.write(answer)
    if json.loads(answer)["command"] != "continue":
        sys.exit(0)
with open(LOG + "/done." + cmd, "w") as f:
    f.write("ok")
"""

# The same handshake from a POSIX shell script with `read`, the way small site scripts do it.
WAZUH_SH_SCRIPT = """#!/bin/sh
LOG={log}
read -r INPUT
printf '%s\\n' "$INPUT" > "$LOG/stdin"
printf '%s\\n' 'not json: scripts print chatter too'
MSG='{{"version":1,"origin":{{"name":"sh-drop","module":"active-response"}},'
MSG="$MSG"'"command":"check_keys","parameters":{{"keys":["k1","k2"]}}}}'
printf '%s\\n' "$MSG"
read -r ANSWER
printf '%s\\n' "$ANSWER" > "$LOG/answer"
exit 0
"""


def recorder(seen: list[str]) -> Callable[[str], bool]:
    """A key_active that records what it was asked and answers "not active"."""

    def key_active(key: str) -> bool:
        seen.append(key)
        return False

    return key_active


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# -- OSSEC argv protocol ---------------------------------------------------------------------


def test_ossec_add_and_delete_get_exact_arguments(
    write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("ossec-drop.sh", OSSEC_SCRIPT.format(log=log_dir))
    responder = make_responder(ar_dir, tmp_path, "ossec-drop.sh", protocol="ossec")
    request = request_for()
    state = responder.add(request)
    expected = ["alice", ATTACKER, ALERT_ID, "5712", LOCATION, "-"]
    assert lines(log_dir / "argv.add") == ["add", *expected]
    # The delete repeats the add arguments from the saved state, even without the alert.
    bare = Request(command="custom", target=request.target)
    responder.delete(bare, json.loads(json.dumps(state)))
    assert lines(log_dir / "argv.delete") == ["delete", *expected]
    assert lines(log_dir / "cwd.add") == [str(ar_dir.parent)]
    env = set(lines(log_dir / "env.add"))
    # dash adds PWD (and may add OLDPWD); nothing from our environment leaks in.
    assert "PATH" in env
    assert env <= {"PATH", "PWD", "OLDPWD", "SHLVL", "_"}


def test_ossec_missing_values_are_dashes_and_extra_args_follow(
    write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("ossec-drop.sh", OSSEC_SCRIPT.format(log=log_dir))
    responder = make_responder(ar_dir, tmp_path, "ossec-drop.sh", protocol="ossec")
    import ipaddress

    request = Request(
        command="custom",
        target=Target(srcip=ipaddress.ip_address("2001:db8::7")),
        extra_args=("--quiet",),
    )
    responder.add(request)
    assert lines(log_dir / "argv.add") == ["add", "-", "2001:db8::7", "-", "-", "-", "-", "--quiet"]


def test_ossec_location_is_one_bounded_printable_element() -> None:
    assert ossec_location(LOCATION) == LOCATION
    assert ossec_location("a\nb") == "-"
    assert ossec_location("x" * 300) == "-"
    assert ossec_location("") == "-"
    assert ossec_location("bell\x07") == "-"


def test_ossec_bad_alert_id_refused_before_anything_runs(
    write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("ossec-drop.sh", OSSEC_SCRIPT.format(log=log_dir))
    responder = make_responder(ar_dir, tmp_path, "ossec-drop.sh", protocol="ossec")
    good = request_for()
    assert good.alert is not None
    from dataclasses import replace

    from msgspec import structs

    bad = structs.replace(good, alert=replace(good.alert, id="1; rm -rf /"))
    with pytest.raises(InvalidArgument, match="alert id"):
        responder.add(bad)
    assert not (log_dir / "argv.add").exists()


def test_nonzero_exit_is_an_error_carrying_stderr(
    write_script: ScriptWriter, ar_dir: Path, tmp_path: Path
) -> None:
    write_script("fails.sh", "#!/bin/sh\necho 'iptables: Permission denied' >&2\nexit 4\n")
    for protocol in ("ossec", "wazuh"):
        responder = make_responder(ar_dir, tmp_path, "fails.sh", protocol=protocol)
        with pytest.raises(ExecutionError, match=r"status 4: iptables: Permission denied"):
            responder.add(request_for())


# -- Wazuh JSON protocol ---------------------------------------------------------------------


def test_wazuh_add_continue_then_delete_with_same_message(
    write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("custom-ar.py", WAZUH_PY_SCRIPT.format(log=str(log_dir)))
    asked: list[str] = []

    def key_active(key: str) -> bool:
        asked.append(key)
        return False

    responder = make_responder(ar_dir, tmp_path, "custom-ar.py", key_active=key_active)
    request = request_for(extra=("-v",))
    state = responder.add(request)
    assert asked == [ATTACKER]
    assert state["keys"] == [ATTACKER]
    assert (log_dir / "done.add").read_text() == "ok"

    sent = json.loads((log_dir / "stdin.add").read_text())
    assert sent["version"] == 1
    assert sent["origin"] == {"name": "node01", "module": "wazuh-execd"}
    assert sent["command"] == "add"
    params = sent["parameters"]
    assert params["program"] == "active-response/bin/custom-ar.py"
    assert params["extra_args"] == ["-v"]
    assert params["alert"]["rule"]["id"] == "5712"
    assert params["alert"]["data"] == {"srcip": ATTACKER, "dstuser": "alice"}
    answer = json.loads((log_dir / "answer").read_text())
    assert answer["command"] == "continue"
    assert answer["parameters"]["keys"] == [ATTACKER]

    responder.delete(request, json.loads(json.dumps(state)))
    deleted = json.loads((log_dir / "stdin.delete").read_text())
    assert deleted == {**sent, "command": "delete"}
    assert (log_dir / "done.delete").read_text() == "ok"


def test_wazuh_check_keys_abort_raises_already_active(
    write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("custom-ar.py", WAZUH_PY_SCRIPT.format(log=str(log_dir)))
    responder = make_responder(ar_dir, tmp_path, "custom-ar.py", key_active=lambda k: True)
    with pytest.raises(AlreadyActive) as info:
        responder.add(request_for())
    assert info.value.keys == (ATTACKER,)
    assert json.loads((log_dir / "answer").read_text())["command"] == "abort"
    assert not (log_dir / "done.add").exists()


def test_abort_with_nonzero_exit_is_still_already_active(
    write_script: ScriptWriter, ar_dir: Path, tmp_path: Path
) -> None:
    write_script(
        "strict",
        "#!/bin/sh\nread -r LINE\n"
        'echo \'{"version":1,"command":"check_keys","parameters":{"keys":["k"]}}\'\n'
        "read -r ANSWER\nexit 1\n",
    )
    responder = make_responder(ar_dir, tmp_path, "strict", key_active=lambda k: True)
    with pytest.raises(AlreadyActive):
        responder.add(request_for())


def test_brace_chatter_is_output_but_a_bad_check_keys_fails_fast(
    write_script: ScriptWriter, ar_dir: Path, tmp_path: Path
) -> None:
    write_script("chatty", "#!/bin/sh\nread -r LINE\necho '{not json'\necho '{\"a\":1}'\nexit 0\n")
    responder = make_responder(ar_dir, tmp_path, "chatty")
    assert responder.add(request_for())["keys"] == []
    write_script(
        "badkeys",
        "#!/usr/bin/python3\nimport json, sys, time\nsys.stdin.readline()\n"
        'keys = [f"k{i}" for i in range(40)]\n'
        'print(json.dumps({"version": 1, "command": "check_keys", "parameters": {"keys": keys}}),'
        " flush=True)\nsys.stdin.readline()\ntime.sleep(30)\n",
    )
    responder = make_responder(ar_dir, tmp_path, "badkeys", deadline=20)
    start = time.monotonic()
    with pytest.raises(InvalidArgument, match="at most 16"):
        responder.add(request_for())
    assert time.monotonic() - start < 5


def test_wazuh_shell_script_keys_joined_like_execd(
    write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("sh-drop", WAZUH_SH_SCRIPT.format(log=log_dir))
    asked: list[str] = []
    responder = make_responder(ar_dir, tmp_path, "sh-drop", key_active=recorder(asked))
    state = responder.add(request_for())
    assert asked == ["k1-k2"]
    assert state["keys"] == ["k1", "k2"]
    assert json.loads((log_dir / "stdin").read_text())["command"] == "add"
    assert json.loads((log_dir / "answer").read_text())["command"] == "continue"


def test_wazuh_script_sees_validated_srcip_not_the_raw_alert(
    write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("custom-ar.py", WAZUH_PY_SCRIPT.format(log=str(log_dir)))
    responder = make_responder(ar_dir, tmp_path, "custom-ar.py")
    request = request_for()
    assert request.alert is not None
    from dataclasses import replace

    from msgspec import structs

    # The raw alert carries the attacker's spelling; the target is what validate.parse_ip made.
    raw = dict(request.alert.raw)
    raw["data"] = {"srcip": "::ffff:203.0.113.7", "dstuser": "alice; reboot", "port": "22"}
    responder.add(structs.replace(request, alert=replace(request.alert, raw=raw)))
    sent = json.loads((log_dir / "stdin.add").read_text())
    assert sent["parameters"]["alert"]["data"] == {
        "srcip": ATTACKER,
        "dstuser": "alice",
        "port": "22",
    }


def _gone(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(
    "body",
    [
        # Never answers check_keys: reads its line, starts a child, then blocks on stdin.
        "read -r LINE\nsleep 300 &\necho $! > {log}/child\nread -r NEVER\n",
        # Wazuh #29602: reads stdin to EOF, which never comes because stdin stays open.
        "sleep 300 &\necho $! > {log}/child\ncat > /dev/null\n",
        # Answers, gets "continue", then never exits.
        "read -r LINE\nsleep 300 &\necho $! > {log}/child\n"
        'echo \'{{"version":1,"command":"check_keys","parameters":{{"keys":["k"]}}}}\'\n'
        "read -r ANSWER\nwhile :; do sleep 1; done\n",
    ],
    ids=["no-check-keys", "reads-to-eof", "never-exits"],
)
def test_hanging_script_and_children_killed_at_deadline(
    body: str, write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("hangs", "#!/bin/sh\n" + body.format(log=log_dir))
    responder = make_responder(ar_dir, tmp_path, "hangs", deadline=1.0)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="1s deadline; its process group was killed"):
        responder.add(request_for())
    elapsed = time.monotonic() - start
    # deadline + SIGTERM grace (procs.KILL_GRACE) + slack
    assert elapsed < 4.5, elapsed
    child = int((log_dir / "child").read_text())
    deadline = time.monotonic() + 3
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the script's background child outlived the deadline"


def test_ossec_hanging_script_killed_at_deadline(
    write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("hangs.sh", f"#!/bin/sh\nsleep 300 &\necho $! > {log_dir}/child\nwait\n")
    responder = make_responder(ar_dir, tmp_path, "hangs.sh", protocol="ossec", deadline=1.0)
    with pytest.raises(DeadlineExceeded):
        responder.add(request_for())
    child = int((log_dir / "child").read_text())
    deadline = time.monotonic() + 3
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


def test_stateless_script_without_check_keys(
    write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("notify", f"#!/bin/sh\nread -r LINE\nprintf '%s\\n' \"$LINE\" > {log_dir}/in\n")
    called: list[str] = []
    responder = make_responder(ar_dir, tmp_path, "notify", key_active=recorder(called))
    state = responder.add(request_for())
    assert state["keys"] == [] and called == []
    assert json.loads((log_dir / "in").read_text())["command"] == "add"


def test_key_is_srcip_then_username_then_filename(
    ar_dir: Path, tmp_path: Path, write_script: ScriptWriter
) -> None:
    write_script("x", "#!/bin/sh\nexit 0\n")
    responder = make_responder(ar_dir, tmp_path, "x")
    assert responder.key(request_for()) == ATTACKER
    assert responder.key(Request(command="c", target=Target(username="bob"))) == "bob"
    assert responder.key(Request(command="c", target=Target(filename="/tmp/f"))) == "/tmp/f"
    with pytest.raises(InvalidArgument):
        responder.key(Request(command="c", target=Target()))


# -- strict resolution -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "/bin/sh", "..", ".", "a/../../b", "..hidden", "x\x00y", ""])
def test_traversal_names_refused(name: str, ar_dir: Path, write_script: ScriptWriter) -> None:
    write_script("x", "#!/bin/sh\nexit 0\n")
    with pytest.raises(ScriptRefused):
        resolve_script(ar_dir, name)


def test_for_command_refuses_even_if_config_validation_was_bypassed(ar_dir: Path, tmp_path: Path) -> None:
    command = CommandConfig.model_construct(
        name="evil", executable="../../../bin/sh", protocol="ossec", deadline=None
    )
    with pytest.raises(ScriptRefused, match="bare file name"):
        ExternalScript.for_command(command, ar_dir, ResponderContext(state_dir=tmp_path), lambda k: False)


def test_symlink_outside_refused_inside_allowed(ar_dir: Path, write_script: ScriptWriter) -> None:
    (ar_dir / "sneaky").symlink_to("/bin/true")
    with pytest.raises(ScriptRefused, match="outside active_response_dir"):
        resolve_script(ar_dir, "sneaky")
    real = write_script("firewall-drop", "#!/bin/sh\nexit 0\n")
    (ar_dir / "firewall-drop.sh").symlink_to("firewall-drop")
    assert resolve_script(ar_dir, "firewall-drop.sh") == real.resolve()


def test_unsafe_files_refused(ar_dir: Path, write_script: ScriptWriter) -> None:
    with pytest.raises(ScriptRefused, match="no script"):
        resolve_script(ar_dir, "missing")
    (ar_dir / "adir").mkdir()
    with pytest.raises(ScriptRefused, match="not a regular file"):
        resolve_script(ar_dir, "adir")
    path = write_script("noexec", "#!/bin/sh\n")
    os.chmod(path, 0o640)
    # root's access(X_OK) still needs one x bit set, so this holds as root too.
    with pytest.raises(ScriptRefused, match="not executable"):
        resolve_script(ar_dir, "noexec")
    path = write_script("open", "#!/bin/sh\n")
    os.chmod(path, 0o757)
    with pytest.raises(ScriptRefused, match="world-writable"):
        resolve_script(ar_dir, "open")
    with pytest.raises(ScriptRefused, match="not usable"):
        resolve_script(ar_dir / "nope", "x")


def test_alert_built_from_target_for_manual_orders(
    write_script: ScriptWriter, ar_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    write_script("custom-ar.py", WAZUH_PY_SCRIPT.format(log=str(log_dir)))
    responder = make_responder(ar_dir, tmp_path, "custom-ar.py")
    import ipaddress

    manual = Request(command="custom", target=Target(srcip=ipaddress.ip_address(ATTACKER)))
    responder.add(manual)
    sent = json.loads((log_dir / "stdin.add").read_text())
    # What the Wazuh API's PUT /active-response builds for a manual run: only data.srcip.
    assert sent["parameters"]["alert"] == {"data": {"srcip": ATTACKER}}


def test_executor_deadline_scope_caps_the_script_deadline(
    write_script: ScriptWriter, ar_dir: Path, tmp_path: Path
) -> None:
    from dfir_ar import procs

    write_script("hangs", "#!/bin/sh\nread -r LINE\nread -r NEVER\n")
    responder = make_responder(ar_dir, tmp_path, "hangs", deadline=30)
    start = time.monotonic()
    with procs.deadline_scope(time.monotonic() + 1), pytest.raises(DeadlineExceeded):
        responder.add(request_for())
    assert time.monotonic() - start < 5
