"""processes collector against real processes with known files and sockets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.processes import (
    Processes,
    _read_process,
    _Scan,
    hex_address,
    parse_inet_table,
    parse_stat,
)
from dfir_ar.collector import CollectJob, CollectorContext, Outcome, Status
from dfir_ar.evidence.bundle import BundleWriter
from dfir_ar.responder import Target
from dfir_ar.validate import parse_ip
from tests.conftest import require_root, require_tool
from tests.evidence.helpers import read_members, seal
from tests.netns import net_pair

CHILD = r"""
import socket, sys, time
path, connect_to = sys.argv[1], sys.argv[2]
held = open(path, "w")
fam = socket.AF_INET6 if ":" in connect_to else socket.AF_INET
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen()
udp = socket.socket(fam, socket.SOCK_DGRAM)
udp.connect((connect_to, 5353))  # UDP connect sends nothing: no traffic leaves
print(listener.getsockname()[1], udp.getsockname()[1], flush=True)
time.sleep(60)
"""


def run_processes(tmp_path: Path, writer: BundleWriter, srcip: str | None = "127.0.0.1",
                  extra: list[str] | None = None, deadline: float = 60.0,
                  ) -> tuple[Outcome, list[dict[str, Any]], Any]:
    job = CollectJob(
        target=Target(srcip=parse_ip(srcip) if srcip else None),
        options=Processes.parse_options(extra or []),
        deadline=time.monotonic() + deadline,
        max_bytes=writer.max_bytes,
    )
    outcome = Processes(CollectorContext(state_dir=tmp_path)).collect(job, writer)
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    data = read_members(result.path).get("artifacts/processes/processes.jsonl", b"")
    return outcome, [json.loads(line) for line in data.splitlines()], report


@pytest.fixture
def child(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int, int]]:
    held = tmp_path / "held-open.txt"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(held), "127.0.0.1"],
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        tcp_port, udp_port = map(int, proc.stdout.readline().split())
        yield proc, held, tcp_port, udp_port
    finally:
        proc.kill()
        proc.wait()


def test_child_found_with_files_sockets_and_exe_hash(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter],
    child: tuple[subprocess.Popen[str], Path, int, int],
) -> None:
    proc, held, tcp_port, udp_port = child
    outcome, records, report = run_processes(tmp_path, bundle_writer("processes"))
    assert outcome.status is Status.OK
    by_pid = {r["pid"]: r for r in records}
    me = by_pid[proc.pid]
    assert me["ppid"] == os.getpid()
    assert me["cmdline"][:2] == [sys.executable, "-c"]
    assert me["cwd"] == str(tmp_path)
    assert me["user"] == "root" if os.geteuid() == 0 else me["uid"] == os.geteuid()
    assert {"fd": 3, "path": str(held)} in me["open_files"]
    exe = os.path.realpath(sys.executable)
    assert me["exe"] == exe
    assert me["exe_sha256"] == hashlib.sha256(Path(exe).read_bytes()).hexdigest()
    assert abs(me["start_time"] - time.time()) < 60
    listen = [s for s in me["sockets"] if s.get("state") == "LISTEN"]
    assert listen and listen[0]["lport"] == tcp_port and listen[0]["laddr"] == "127.0.0.1"
    (udp,) = [s for s in me["sockets"] if s["proto"] == "udp"]
    assert (udp["raddr"], udp["rport"], udp["lport"]) == ("127.0.0.1", 5353, udp_port)
    assert me["talks_to_srcip"] is True
    talkers = outcome.details["talks_to_srcip"]
    assert proc.pid in [t["pid"] for t in talkers]
    assert report.manifest.collectors[0].details["talks_to_srcip"] == talkers
    assert by_pid[os.getpid()]["pid"] == os.getpid()
    # Every process has the documented keys, and ones we could not read say so.
    for record in records:
        assert {"pid", "ppid", "name", "user", "open_files", "sockets"} <= set(record)
    for pid in outcome.details["access_denied_pids"]:
        assert by_pid[pid]["access_denied"]
    # The second run hashes nothing new: the cache is keyed by (dev, inode, size, mtime, ctime).
    outcome2, records2, _ = run_processes(tmp_path, bundle_writer("processes"))
    assert outcome2.details["exe_hashed"] == 0 and outcome2.details["exe_hash_cache_hits"] > 0
    assert {r["pid"]: r.get("exe_sha256") for r in records2}[proc.pid] == me["exe_sha256"]


def test_deleted_executable_is_flagged_and_still_hashed(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    binary = tmp_path / "dropper"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", binary)
    expected = hashlib.sha256(binary.read_bytes()).hexdigest()
    proc = subprocess.Popen([str(binary), "60"])
    try:
        time.sleep(0.1)
        binary.unlink()
        _, records, _ = run_processes(tmp_path, bundle_writer("processes"), srcip=None)
    finally:
        proc.kill()
        proc.wait()
    me = {r["pid"]: r for r in records}[proc.pid]
    assert me["exe_deleted"] is True
    assert me["exe"].endswith(" (deleted)")
    assert me["exe_sha256"] == expected
    assert "talks_to_srcip" not in me


def test_process_in_another_network_namespace_is_joined_to_its_sockets(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    require_root()
    require_tool("ip")
    with net_pair("pc") as pair:
        held = tmp_path / "ns-held.txt"
        proc = subprocess.Popen(
            pair.agent_argv([sys.executable, "-c", CHILD, str(held), pair.a6]),
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            outcome, records, _ = run_processes(tmp_path, bundle_writer("processes"),
                                                srcip=pair.a6)
        finally:
            proc.kill()
            proc.wait()
    # `ip netns exec` execs python in place, so the pid is the python process.
    me = {r["pid"]: r for r in records}[proc.pid]
    assert me["netns"] != os.readlink("/proc/self/ns/net")
    (udp,) = [s for s in me["sockets"] if s["proto"] == "udp"]
    assert udp["raddr"] == pair.a6 and udp["family"] == 6
    assert me["talks_to_srcip"] is True
    assert [t["pid"] for t in outcome.details["talks_to_srcip"]] == [proc.pid]
    assert outcome.details["network_namespaces"] >= 2


def test_byte_cap_keeps_whole_lines_and_is_partial(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    outcome, records, report = run_processes(tmp_path, bundle_writer("processes",
                                                                      max_bytes=3000))
    assert outcome.status is Status.PARTIAL and "byte cap" in outcome.reason
    assert records  # whole JSON objects only (json.loads above would have failed otherwise)
    assert report.manifest.collectors[0].status is Status.PARTIAL


def test_deadline_already_passed_is_partial(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    outcome, records, _ = run_processes(tmp_path, bundle_writer("processes"), deadline=-1)
    assert outcome.status is Status.PARTIAL
    assert "deadline" in outcome.reason
    assert records == []


def test_vanished_pid_is_recorded_not_fatal() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    scan = _Scan("127.0.0.1")
    assert _read_process(proc.pid, scan, 0.0, 100) is None
    assert scan.vanished == [proc.pid]


def test_proc_parsers() -> None:
    assert parse_stat("42 (a) (b c) S 7 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0")[0] == "a) (b c"
    _comm, state, ppid, start = parse_stat("42 (a) (b c) S 7 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12345")
    assert (state, ppid, start) == ("S", 7, 12345)
    assert hex_address("0100007F:0050") == ("127.0.0.1", 80)
    assert hex_address("B80D0120000000000000000006000000:1F90") == ("2001:db8::6", 8080)
    assert hex_address("0000000000000000FFFF00000700710C:0035") == ("12.113.0.7", 53)
    table = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
             "timeout inode\n"
             "   0: 056433C6:1F90 066433C6:D431 01 00000000:00000000 00:00000000 00000000     0"
             "        0 4242 1 0000000000000000 20 4 30 10 -1\n"
             "   1: 056433C6:1F90 066433C6:D432 06 00000000:00000000 00:00000000 00000000     0"
             "        0 0 1 0000000000000000 20 4 30 10 -1\n")
    entries = list(parse_inet_table(table, 4, "tcp"))
    assert entries == [(4242, {"proto": "tcp", "family": 4, "laddr": "198.51.100.5", "lport": 8080,
                               "raddr": "198.51.100.6", "rport": 54321, "state": "ESTABLISHED"})]
