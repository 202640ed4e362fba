"""End to end: a real `dfir-ar serve` process tailing real-format Wazuh alerts, writing a real
hosts.deny (a configured path under tmp_path), across SIGTERM and kill -9."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.engine.e2e import make_setup, serving, wait_for, wazuh_alert

pytestmark = pytest.mark.slow


def adds_and_deletes(records: list[dict[str, object]]) -> tuple[Counter[str], Counter[str]]:
    adds: Counter[str] = Counter()
    deletes: Counter[str] = Counter()
    for r in records:
        if r["action"] == "add" and r["outcome"] == "ok":
            adds[str(r["key"])] += 1
        if r["action"] == "delete" and r["outcome"] == "ok":
            deletes[str(r["key"])] += 1
    return adds, deletes


def test_serve_blocks_from_alerts_and_unblocks_on_time(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, timeout=2)
    with serving(setup) as serve:
        setup.append(
            wazuh_alert("203.0.113.12", n=2, agent="001"),  # location "local" = agent 001
            wazuh_alert("203.0.113.10"),
            wazuh_alert("198.51.100.77", n=1),
        )
        wait_for(lambda: setup.deny_lines() == ["ALL: 203.0.113.10"], 10, "the deny line")
        wait_for(lambda: setup.deny_lines() == [], 10, "the line to be removed")
        wait_for(lambda: any(r["action"] == "delete" for r in setup.audit()), 5, "the record")
        [delete] = [r for r in setup.audit() if r["action"] == "delete"]
        details = delete["details"]
        assert isinstance(details, dict) and details["late"] <= 1.0  # at most 1 s late
        [add] = [r for r in setup.audit() if r["action"] == "add"]
        # Undone on time: within 1 s after the deadline recorded when the block was added.
        assert 0 <= float(delete["time"]) - float(add["expires_at"]) <= 1.0
        # The white-listed address was refused with a reason, nothing ran for it; the alert
        # from another agent was not run on this host.
        refused = [str(r["error"]) for r in setup.audit() if r["action"] == "refused"]
        assert len(refused) == 2
        assert "agent(s) 001" in refused[0] and "white-listed" in refused[1]
        assert serve.terminate() == 0
    ar_log = (setup.log_dir / "active-responses.log").read_text().splitlines()
    assert [line.split(": ", 1)[1][:8] for line in ar_log] == [
        "Starting", '{"versio', "Ended", "Starting", '{"versio', "Ended",
    ]
    assert '"command":"add"' in ar_log[1] and '"command":"delete"' in ar_log[4]
    assert '"srcip":"203.0.113.10"' in ar_log[1]  # the whole alert, as Wazuh passes it
    assert stat.S_IMODE(setup.state_dir.stat().st_mode) == 0o700
    assert not setup.socket.exists()  # removed on a graceful stop


def test_graceful_stop_keeps_the_block_and_restart_lifts_it_on_time(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, timeout=6)  # outlives the stop even on a loaded host
    with serving(setup) as serve:
        setup.append(wazuh_alert("203.0.113.11"))
        wait_for(lambda: setup.deny_lines() == ["ALL: 203.0.113.11"], 10, "the deny line")
        assert serve.terminate() == 0
    assert setup.deny_lines() == ["ALL: 203.0.113.11"]  # OSSEC/Wazuh would lift it here
    with serving(setup) as serve:
        wait_for(lambda: setup.deny_lines() == [], 10, "the line to be removed after restart")
        assert serve.terminate() == 0
    adds, deletes = adds_and_deletes(setup.audit())
    assert adds == deletes == Counter({"203.0.113.11": 1})


def test_a_stop_before_any_alert_keeps_the_place_in_the_file(tmp_path: Path) -> None:
    # The first start follows an existing file from its end; that place is recorded at once,
    # so an alert written while serve is down is read by the next start, not skipped.
    setup = make_setup(tmp_path, timeout=60)
    setup.append(wazuh_alert("203.0.113.40"))  # before dfir-ar was ever started: not acted on
    with serving(setup) as serve:
        assert serve.terminate() == 0
    setup.append(wazuh_alert("203.0.113.41", n=1))  # while serve is down
    with serving(setup) as serve:
        wait_for(lambda: setup.deny_lines() == ["ALL: 203.0.113.41"], 10,
                 "the alert written while serve was down")
        assert serve.terminate() == 0
    assert setup.deny_lines() == ["ALL: 203.0.113.41"]


def test_a_file_that_appears_while_serve_is_stopped_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    setup = make_setup(tmp_path, timeout=60)  # no alerts file yet: serve waits for it
    with serving(setup) as serve:
        assert serve.terminate() == 0
    setup.append(wazuh_alert("203.0.113.42"))  # Wazuh creates it while serve is down
    with serving(setup) as serve:
        wait_for(lambda: setup.deny_lines() == ["ALL: 203.0.113.42"], 10,
                 "the alert in the file that appeared while serve was down")
        assert serve.terminate() == 0


def test_kill_9_then_restart_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, timeout=4)
    first = [f"203.0.113.{i}" for i in range(20, 25)]
    while_dead = [f"203.0.113.{i}" for i in range(25, 28)]
    with serving(setup) as serve:
        setup.append(*(wazuh_alert(ip, n=i) for i, ip in enumerate(first)))
        wait_for(lambda: len(setup.deny_lines()) == 5, 10, "five deny lines")
        serve.kill9()
    assert sorted(setup.deny_lines()) == sorted(f"ALL: {ip}" for ip in first)
    # Alerts written while serve is down are read on restart (from the durable cursor).
    setup.append(*(wazuh_alert(ip, n=10 + i) for i, ip in enumerate(while_dead)))
    with serving(setup) as serve:
        ready_at = time.time()
        wait_for(lambda: {f"ALL: {ip}" for ip in while_dead} <= set(setup.deny_lines()), 10,
                 "the alerts written while serve was down")
        wait_for(lambda: setup.deny_lines() == [], 15, "every line to be removed")
        assert serve.terminate() == 0
    records = setup.audit()
    adds, deletes = adds_and_deletes(records)
    everyone = Counter({ip: 1 for ip in first + while_dead})
    assert adds == everyone  # no alert lost, none run twice
    assert deletes == everyone
    deadline = {r["key"]: float(r["expires_at"]) for r in records if r["action"] == "add"}
    for r in records:
        if r["action"] == "delete":
            due = deadline[r["key"]]
            if due > ready_at:
                assert float(r["time"]) - due <= 1.0  # on time
            else:  # expired while serve was dead: undone at once on restart
                assert float(r["time"]) - ready_at <= 2.0


def test_kill_9_during_a_burst_never_duplicates_a_line(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, timeout=30)
    ips = [f"203.0.113.{i}" for i in range(100, 160)]
    with serving(setup) as serve:
        setup.append(*(wazuh_alert(ip, n=i) for i, ip in enumerate(ips)))
        wait_for(lambda: len(setup.deny_lines()) >= 5, 10, "the burst to start")
        serve.kill9()  # somewhere in the middle of the burst
    with serving(setup) as serve:
        wait_for(lambda: len(setup.deny_lines()) == len(ips), 15, "every alert of the burst")
        serve.terminate()
    assert sorted(setup.deny_lines()) == sorted(f"ALL: {ip}" for ip in ips)
    adds, _ = adds_and_deletes(setup.audit())
    assert set(adds) == set(ips)  # nothing lost
    # Alerts read but not yet executed at the kill were recorded as intents with their cursor:
    # the restart runs them (flagged retried_intent). Only an add in flight at the kill (at most
    # one per worker) can have run before and again; it is idempotent, so no line is doubled.
    retried = {str(r["key"]) for r in setup.audit() if r["action"] == "add"
               and isinstance(r["details"], dict) and r["details"].get("retried_intent")}
    twice = {ip for ip, count in adds.items() if count > 1}
    assert all(count <= 2 for count in adds.values())
    assert twice <= retried
    assert len(twice) <= 8  # global.workers


def test_run_local_without_serve_hands_the_timeout_to_the_next_serve(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, timeout=60)
    done = setup.cli("run", "host-deny", "--local", "--srcip", "203.0.113.30",
                     "--timeout", "3", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    assert "no dfir-ar serve is running" in done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "ok" and result["key"] == "203.0.113.30"
    assert setup.deny_lines() == ["ALL: 203.0.113.30"]
    listed = setup.cli("blocks", "list", "--json")
    assert listed.returncode == 0
    [entry] = json.loads(listed.stdout)
    assert entry["key"] == "203.0.113.30" and entry["offences"] == 1
    with serving(setup, follow_alerts=False) as serve:
        wait_for(lambda: setup.deny_lines() == [], 10, "serve to run the handed-over undo")
        assert serve.terminate() == 0
    [rec] = [r for r in setup.audit() if r["action"] == "add"]
    assert str(rec["operator"]) != "None"


def test_run_local_and_blocks_through_a_running_serve(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, timeout=60)
    with serving(setup, follow_alerts=False) as serve:
        done = setup.cli("run", "host-deny", "--local", "--srcip", "203.0.113.31", "--wait")
        assert done.returncode == 0, done.stderr
        assert "no dfir-ar serve" not in done.stderr
        assert "host-deny 203.0.113.31: ok" in done.stdout
        undone = re.search(r"undone in (\d+)s", done.stdout)
        assert undone is not None and 50 <= int(undone.group(1)) <= 60, done.stdout
        assert setup.deny_lines() == ["ALL: 203.0.113.31"]
        table = setup.cli("blocks", "list")
        assert "203.0.113.31" in table.stdout and "EXPIRES IN" in table.stdout
        # Refused: a protected (white-listed) address, and a srcip that is not an address.
        refused = setup.cli("run", "host-deny", "--local", "--srcip", "198.51.100.5", "--wait")
        assert refused.returncode == 3 and "protected" in refused.stdout + refused.stderr
        bad = setup.cli("run", "host-deny", "--local", "--srcip", "1.2.3.4;id", "--wait")
        assert bad.returncode == 2 and "srcip" in bad.stderr
        released = setup.cli("blocks", "release", "203.0.113.31")
        assert released.returncode == 0, released.stderr
        assert "released" in released.stdout
        assert setup.deny_lines() == []
        # Who released it is recorded, as for `run`: the name and the kernel's uid and pid.
        [lifted] = [r for r in setup.audit() if r["action"] == "delete"]
        assert re.fullmatch(r"\S+ \(uid \d+, pid \d+\)", str(lifted["operator"])), lifted
        assert f"release 203.0.113.31 by {lifted['operator']}" in serve.log()
        # An address in another form finds the same entry (serve is given the canonical one).
        setup.cli("run", "host-deny", "--local", "--srcip", "2001:db8::7", "--wait")
        again = setup.cli("blocks", "release", "2001:0db8:0::7")
        assert again.returncode == 0 and "host-deny 2001:db8::7: released" in again.stdout
        missing = setup.cli("blocks", "release", "203.0.113.99")
        assert missing.returncode == 2 and "nothing in the ledger matches" in missing.stderr
        missing_json = setup.cli("blocks", "release", "203.0.113.99", "--json")
        assert missing_json.returncode == 2 and json.loads(missing_json.stdout) == []
    fleet = setup.cli("run", "host-deny", "--agent", "001", "--srcip", "203.0.113.9")
    assert fleet.returncode == 2 and "fleet mode" in fleet.stderr


def test_run_of_a_command_added_after_serve_started_says_restart_serve(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, timeout=60)
    with serving(setup, follow_alerts=False) as serve:
        # The file gains a command while serve runs: serve still has the config it started with.
        newer = tmp_path / "newer.toml"
        newer.write_text(setup.config.read_text() + '\n[[command]]\nname = "deny-later"\n'
                         'executable = "host-deny"\nexpect = ["srcip"]\n')
        done = setup.cli("run", "deny-later", "--local", "--srcip", "203.0.113.34", "--wait",
                         "-c", str(newer))
        assert done.returncode == 2, done.stderr
        assert "serve runs an older config" in done.stderr
        assert "restart serve to apply config changes" in done.stderr
        assert str(newer) in done.stderr
        # A name in neither: the plain "no such command" with the names configured.
        typo = setup.cli("run", "deny-latr", "--local", "--srcip", "203.0.113.34")
        assert typo.returncode == 2 and "older config" not in typo.stderr
        assert serve.terminate() == 0
        assert "dfir-ar serve stopped: no alerts read" in serve.log()


def test_bad_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, extra='\n[[active_response]]\ncommand = "host-denny"\nlevel = 3\n')
    done = setup.cli("serve", "-c", str(setup.config), timeout=30)
    assert done.returncode == 2
    assert 'did you mean "host-deny"' in done.stderr
    assert not setup.state_dir.exists() and not setup.socket.exists()


def test_control_socket_is_0600_and_serves_root_only(tmp_path: Path) -> None:
    require_root()
    setup = make_setup(tmp_path)
    with serving(setup, follow_alerts=False):
        assert stat.S_IMODE(setup.socket.stat().st_mode) == 0o600
        # Loosen the file mode to prove the kernel-reported peer uid is checked as well.
        os.chmod(setup.socket, 0o666)
        answer = json.loads(_as_nobody(setup.socket, b'{"op":"run","command":"host-deny",'
                                       b'"srcip":"203.0.113.5"}\n'))
        assert answer["ok"] is False and "root only" in answer["error"]
        assert setup.deny_lines() == []
        # A second serve on the same state_dir refuses to start, before touching the ledger.
        second = setup.cli("serve", "-c", str(setup.config), timeout=30)
        assert second.returncode == 6, second.stderr
        assert "in use by another dfir-ar process" in second.stderr
        assert "reconcile" not in second.stderr
        assert "serve stopped" not in second.stderr  # it never ran; the first one still does


_PROBE = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.settimeout(20)\n"
    "s.connect(sys.argv[1])\n"
    "s.sendall(sys.stdin.buffer.read())\n"
    "sys.stdout.buffer.write(s.recv(4096))\n"
)


def _as_nobody(path: Path, payload: bytes) -> bytes:
    """Send ``payload`` from a process running as uid 65534 and return the answer.

    The system interpreter, not the venv's: uid 65534 may not be able to read the venv, and
    the probe needs only the standard library. Not os.fork(): pytest's process has threads.
    """
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    done = subprocess.run([python, "-c", _PROBE, str(path)], input=payload, user=65534,
                          group=65534, extra_groups=[], capture_output=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def test_garbage_on_the_control_socket_is_answered_not_fatal(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    with serving(setup, follow_alerts=False) as serve:
        for payload in (b"not json\n", b"[1,2]\n", b'{"op":"nope"}\n', b"x" * 70000):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(setup.socket))
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                answer = json.loads(s.recv(65536).decode())
                assert answer["ok"] is False
        assert serve.proc.poll() is None


def test_serve_collects_evidence_and_uploads_it(tmp_path: Path) -> None:
    extra = (
        '\n[[command]]\nname = "snapshot"\nexecutable = "processes"\nexpect = []\n'
        '\n[[active_response]]\ncommand = "snapshot"\nrules_id = [5712]\n'
    )
    setup = make_setup(tmp_path, timeout=60, extra=extra)
    store = tmp_path / "evidence"
    with serving(setup) as serve:
        setup.append(wazuh_alert("203.0.113.90"))
        wait_for(lambda: any(r["action"] == "collect" for r in setup.audit()), 60, "collection")
        wait_for(lambda: len(list(store.rglob("*.tar.zst"))) == 1, 30, "the upload")
        assert serve.terminate() == 0
    [rec] = [r for r in setup.audit() if r["action"] == "collect"]
    assert rec["outcome"] == "ok"
    [bundle] = list(store.rglob("*.tar.zst"))
    assert bundle.name == f"{rec['details']['bundle_id']}.tar.zst"
    assert bundle.with_name(bundle.name.replace(".tar.zst", ".manifest.json")).exists()
    assert setup.deny_lines() == ["ALL: 203.0.113.90"]  # both bindings fired


def test_hostile_corpus_runs_nothing_and_serve_keeps_going(tmp_path: Path) -> None:
    corpus = Path(__file__).resolve().parents[2] / "examples" / "alerts" / "hostile.jsonl"
    records = [line for line in corpus.read_bytes().split(b"\n") if line]
    assert len(records) >= 200
    setup = make_setup(tmp_path, timeout=60)
    with serving(setup) as serve:
        with setup.alerts.open("ab") as fh:
            fh.write(b"\n".join(records) + b"\n")
        # A legitimate alert after the corpus proves the service kept going through it.
        setup.append(wazuh_alert("203.0.113.77"))
        wait_for(lambda: setup.deny_lines() == ["ALL: 203.0.113.77"], 30, "the last alert")
        assert serve.terminate() == 0
        log = serve.log()
    adds = [r for r in setup.audit() if r["action"] in ("add", "refresh", "collect")]
    assert [r["key"] for r in adds] == ["203.0.113.77"]
    assert "Traceback" not in log
    ar_lines = (setup.log_dir / "active-responses.log").read_text().splitlines()
    assert len(ar_lines) == 3  # Starting, the input JSON, Ended: for the legitimate alert only


def test_run_never_executes_beside_a_serve_whose_socket_is_gone(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, timeout=60)
    with serving(setup, follow_alerts=False):
        setup.socket.unlink()  # e.g. a tmp cleaner removed it
        done = setup.cli("run", "host-deny", "--local", "--srcip", "203.0.113.33", "--wait")
        assert done.returncode == 6, done.stderr
        assert "in use by another dfir-ar process" in done.stderr
        assert setup.deny_lines() == []


OSSEC_BLOCK = """** Alert 1795334410.{n}: - syslog,sshd,authentication_failures,
2026 Nov 22 08:00:10 e2e-host->/var/log/auth.log
Rule: 5712 (level 10) -> 'sshd: brute force trying to get access to the system.'
Src IP: {ip}
User: root
Nov 22 08:00:10 e2e-host sshd[77]: Failed password for root from {ip} port 4242 ssh2

"""


def test_serve_reads_ossec_alerts_log_blocks(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, timeout=60)
    setup.alerts = tmp_path / "alerts.log"  # OSSEC's multi-line format, detected
    with serving(setup):
        with setup.alerts.open("a") as fh:
            fh.write(OSSEC_BLOCK.format(n=1, ip="203.0.113.44"))
            fh.write(OSSEC_BLOCK.format(n=2, ip="2001:db8:44::1"))
        wait_for(lambda: sorted(setup.deny_lines()) == ["ALL: 203.0.113.44",
                                                        "ALL: [2001:db8:44::1]"],
                 15, "both deny lines")
