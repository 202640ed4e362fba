"""disable-account vs OSSEC/Wazuh's disable-account, on real test users, in one run.

    sudo .venv/bin/python -m bench.accounts            # 20 users x 5 repetitions
    sudo .venv/bin/python -m bench.accounts --users 5 --reps 3

The peer is what OSSEC's and Wazuh's disable-account do: ``passwd -l USER`` on add and
``passwd -u USER`` on delete (one process each). dfir-ar's add reads /etc/shadow, runs
``usermod --expiredate 1`` and ``usermod -L`` and ends the user's processes; its delete restores
the recorded expiry and lock state. Both are timed in-process over the same freshly created users
(``dfirbench<n>``, deleted afterwards), plus ``dfir-ar wazuh-ar`` as a whole process per
add+delete (what a Wazuh agent pays per execution through wazuh-ar). Medians and the ratio are
printed; each user also has one live process that dfir-ar kills (the peer leaves it running,
which is the point of doing better).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from dfir_ar.responder import Request, ResponderContext, Target
from responders.disable_account import DisableAccount, kill_user_processes

DFIR_AR = str(Path(sys.executable).parent / "dfir-ar")


@contextmanager
def bench_users(count: int) -> Iterator[list[str]]:
    names = [f"dfirbench{os.getpid() % 10000}x{i}" for i in range(count)]
    try:
        for name in names:
            subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/bin/sh", name],
                check=True,
                capture_output=True,
            )
            subprocess.run(["chpasswd"], input=f"{name}:Bench-Pass-1\n", text=True, check=True)
        yield names
    finally:
        for name in names:
            with suppress(KeyError):
                kill_user_processes(pwd.getpwnam(name).pw_uid)
            subprocess.run(["userdel", "--force", name], capture_output=True, check=False)


def spawn_sessions(names: list[str]) -> list[subprocess.Popen[bytes]]:
    """One long-lived process per user: what an attacker's SSH session looks like to the host."""
    procs = []
    for name in names:
        entry = pwd.getpwnam(name)
        procs.append(subprocess.Popen(["sleep", "600"], user=entry.pw_uid, group=entry.pw_gid))
    return procs


def reap(procs: list[subprocess.Popen[bytes]]) -> int:
    killed = 0
    for proc in procs:
        if proc.poll() is not None:
            killed += 1
        else:
            proc.kill()
        proc.wait()
    return killed


def time_each(names: list[str], action: Callable[[str], object]) -> list[float]:
    out = []
    for name in names:
        start = time.perf_counter()
        action(name)
        out.append(time.perf_counter() - start)
    return out


def peer_round(names: list[str]) -> tuple[list[float], list[float], int]:
    sessions = spawn_sessions(names)
    add = time_each(names, lambda n: subprocess.run(["passwd", "-l", n], check=True, capture_output=True))
    time.sleep(0.2)
    survivors = sum(1 for p in sessions if p.poll() is None)
    delete = time_each(names, lambda n: subprocess.run(["passwd", "-u", n], check=True, capture_output=True))
    reap(sessions)
    return add, delete, survivors


def dfir_round(names: list[str]) -> tuple[list[float], list[float], int]:
    responder = DisableAccount(
        ResponderContext(state_dir=Path("/nonexistent"), log=logging.getLogger("bench"))
    )
    sessions = spawn_sessions(names)
    states: dict[str, dict[str, object]] = {}

    def add(name: str) -> None:
        states[name] = responder.add(Request(command="disable-account", target=Target(username=name)))

    def delete(name: str) -> None:
        responder.delete(Request(command="disable-account", target=Target(username=name)), states[name])

    add_times = time_each(names, add)
    survivors = sum(1 for p in sessions if p.poll() is None)
    delete_times = time_each(names, delete)
    reap(sessions)
    return add_times, delete_times, survivors


def wazuh_ar_round(names: list[str], state_dir: Path) -> list[float]:
    """Whole-process cost: one wazuh-ar add (with its check_keys handshake) + one delete."""
    config = state_dir / "bench.toml"
    config.write_text(f'[global]\nstate_dir = "{state_dir}"\nlog_dir = "{state_dir}"\n')
    out = []
    for name in names:
        msg = {
            "version": 1,
            "command": "add",
            "parameters": {
                "extra_args": ["--plugin", "disable-account"],
                "alert": {"rule": {"id": "5720", "level": 10}, "data": {"dstuser": name}},
            },
        }
        answer = {"version": 1, "command": "continue", "parameters": {"keys": [name]}}
        start = time.perf_counter()
        subprocess.run(
            [DFIR_AR, "wazuh-ar", "-c", str(config)],
            input=(json.dumps(msg) + "\n" + json.dumps(answer) + "\n").encode(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        msg["command"] = "delete"
        subprocess.run(
            [DFIR_AR, "wazuh-ar", "-c", str(config)],
            input=(json.dumps(msg) + "\n").encode(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        out.append(time.perf_counter() - start)
    return out


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.accounts needs root (it creates and deletes test users)", file=sys.stderr)
        return 2
    peer_add: list[float] = []
    peer_del: list[float] = []
    ours_add: list[float] = []
    ours_del: list[float] = []
    whole: list[float] = []
    peer_survivors = ours_survivors = 0
    with bench_users(args.users) as names, tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            a, d, s = peer_round(names)
            peer_add += a
            peer_del += d
            peer_survivors += s
            a, d, s = dfir_round(names)
            ours_add += a
            ours_del += d
            ours_survivors += s
            whole += wazuh_ar_round(names[: max(1, len(names) // 4)], Path(tmp))
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
    sessions = args.users * args.reps
    print(f"disable-account, {args.users} users x {args.reps} reps (median per account)")
    print(
        f"  add     passwd -l (OSSEC/Wazuh): {ms(peer_add)}   dfir-ar: {ms(ours_add)}"
        f"   ratio dfir-ar/peer {statistics.median(ours_add) / statistics.median(peer_add):.2f}"
    )
    print(
        f"  delete  passwd -u (OSSEC/Wazuh): {ms(peer_del)}   dfir-ar: {ms(ours_del)}"
        f"   ratio dfir-ar/peer {statistics.median(ours_del) / statistics.median(peer_del):.2f}"
    )
    print(f"  dfir-ar wazuh-ar add+delete as two processes: {ms(whole)}")
    print(
        f"  live sessions left running after add: peer {peer_survivors}/{sessions}, "
        f"dfir-ar {ours_survivors}/{sessions}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
