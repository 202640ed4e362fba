#!/usr/bin/env python3
"""SSH brute force, end to end, in two network namespaces (needs root; touches nothing outside
the namespaces and a temporary directory it deletes).

    sudo .venv/bin/python examples/ssh-bruteforce/run.py

attacker 198.51.100.6 --veth-- agent 198.51.100.5 (runs `dfir-ar serve`, tails alerts.json)

1. An alert for rule 5712 (sshd brute force) with srcip 198.51.100.6 is appended to alerts.json.
2. dfir-ar blocks the attacker (firewall-drop, nftables set element with a kernel timeout):
   ping from the attacker fails.
3. After `timeout` seconds the block lifts: ping passes again.
4. A second offence blocks for the first `repeated_offenders` value (minutes, Wazuh semantics).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ATTACKER, AGENT = "198.51.100.6", "198.51.100.5"
TIMEOUT = 8  # seconds, first offence
REPEATED = 0.25  # minutes (15 s), second offence

CONFIG = """\
# Written by examples/ssh-bruteforce/run.py
[global]
state_dir = "{tmp}/state"
log_dir = "{tmp}/log"
agent_name = "web01"
lift_on_stop = false

[[command]]
name = "firewall-drop"
executable = "firewall-drop"
expect = ["srcip"]
timeout_allowed = true

[[active_response]]
command = "firewall-drop"
location = "local"
rules_id = [5712]
timeout = {timeout}
repeated_offenders = [{repeated}]

[responders.firewall-drop]
backend = "nftables"

[evidence]
store = "file://{tmp}/evidence"
"""


def say(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*argv: str, ns: str | None = None, check: bool = True) -> str:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    done = subprocess.run(full, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {done.stderr.strip()}")
    return done.stdout


def ping_ok(att: str) -> bool:
    done = subprocess.run(["ip", "netns", "exec", att, "ping", "-n", "-c", "1", "-W", "0.5", AGENT],
                          capture_output=True, timeout=5, check=False)
    return done.returncode == 0


def wait_for(what: str, predicate: Callable[[], bool], limit: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.25)
    raise SystemExit(f"FAILED: {what} did not happen within {limit:.0f}s")


def alert_line(n: int) -> str:
    now = datetime.now(UTC)
    return json.dumps({
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
        "rule": {"level": 10, "id": "5712", "description":
                 "sshd: brute force trying to get access to the system. Non existent user.",
                 "groups": ["syslog", "sshd", "authentication_failures"], "firedtimes": n},
        "agent": {"id": "000", "name": "web01"},
        "manager": {"name": "web01"},
        "id": f"{int(now.timestamp())}.{1000 + n}",
        "full_log": f"sshd[2{n}]: Invalid user admin from {ATTACKER} port 5{n}000 ssh2",
        "decoder": {"name": "sshd"},
        "data": {"srcip": ATTACKER, "srcuser": "admin"},
        "location": "/var/log/auth.log",
    }) + "\n"


def dfir_ar_argv() -> list[str]:
    beside = Path(sys.executable).with_name("dfir-ar")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("dfir-ar")
    if found is None:
        raise SystemExit("dfir-ar is not installed (pip install -e . in the repository)")
    return [found]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (config, logs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: the scenario creates network namespaces", file=sys.stderr)
        return 2

    tag = uuid.uuid4().hex[:6]
    att, agt = f"ssh-att-{tag}", f"ssh-agt-{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="dfir-ar-ssh-"))
    serve: subprocess.Popen[bytes] | None = None
    try:
        say(f"namespaces: attacker {att} ({ATTACKER}), agent {agt} ({AGENT})")
        sh("ip", "netns", "add", att)
        sh("ip", "netns", "add", agt)
        sh("ip", "link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for ns, ifname, addr in ((att, f"va{tag}", ATTACKER), (agt, f"vb{tag}", AGENT)):
            sh("ip", "link", "set", ifname, "netns", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "addr", "add", f"{addr}/24", "dev", ifname, ns=ns)
            sh("ip", "link", "set", ifname, "up", ns=ns)
        wait_for("the veth link", lambda: ping_ok(att), 10)

        config = tmp / "dfir-ar.toml"
        config.write_text(CONFIG.format(tmp=tmp, timeout=TIMEOUT, repeated=REPEATED))
        alerts = tmp / "alerts.json"
        alerts.touch()
        log = (tmp / "serve.log").open("wb")
        argv = ["ip", "netns", "exec", agt, *dfir_ar_argv(), "serve", "-c", str(config),
                "--alerts", str(alerts)]
        say("starting: " + " ".join(argv[4:]) + "  (inside the agent namespace)")
        serve = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        serve_log = tmp / "serve.log"
        wait_for("dfir-ar serve start-up", lambda: b"ledger" in serve_log.read_bytes()
                 or serve.poll() is not None, 30)
        if serve.poll() is not None:
            print(serve_log.read_text(), file=sys.stderr)
            raise SystemExit("FAILED: dfir-ar serve exited")
        time.sleep(0.5)  # the alert source starts right after the start-up line
        say(f"ping {ATTACKER} -> {AGENT}: {'ok' if ping_ok(att) else 'FAILS'}")

        for offence, expected in ((1, TIMEOUT), (2, REPEATED * 60)):
            say(f"offence {offence}: appending a rule 5712 alert with srcip {ATTACKER} to {alerts.name}")
            with alerts.open("a") as f:
                f.write(alert_line(offence))
            took = wait_for("the block", lambda: not ping_ok(att), 10)
            blocked_at = time.monotonic()
            say(f"  blocked after {took:.1f}s: ping from the attacker now FAILS")
            elem = sh("nft", "list", "set", "inet", "dfir_ar", "block4", ns=agt)
            line = next((ln.strip() for ln in elem.splitlines() if "elements" in ln), "(empty)")
            say(f"  kernel: {line}")
            blocks = subprocess.run([*dfir_ar_argv(), "blocks", "list", "-c", str(config)],
                                    capture_output=True, text=True, timeout=30, check=False)
            for out_line in (blocks.stdout or blocks.stderr).strip().splitlines():
                say(f"  dfir-ar blocks list | {out_line}")
            wait_for("the block to lift", lambda: ping_ok(att), expected + 15)
            lasted = time.monotonic() - blocked_at
            say(f"  lifted: ping passes again; the block lasted ~{lasted:.0f}s "
                f"(configured {expected:.0f}s{' = repeated_offenders[0] minutes' if offence == 2 else ''})")

        say("audit trail (log/audit.jsonl; log/active-responses.log has the Wazuh-format lines):")
        audit = tmp / "log" / "audit.jsonl"
        if audit.exists():
            for ln in audit.read_text().splitlines():
                rec = json.loads(ln)
                when = datetime.fromtimestamp(rec["time"], UTC).strftime("%H:%M:%S")
                reason = (rec.get("details") or {}).get("reason", "alert " + str(rec.get("alert_id")))
                print(f"    {when} {rec['action']:<7} {rec['command']} {rec['key']} "
                      f"-> {rec['outcome']} ({reason})")
        say("done: rule 5712 -> blocked -> expired -> second offence -> longer block -> expired")
        return 0
    finally:
        if serve is not None and serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(timeout=5)
        for ns in (att, agt):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
