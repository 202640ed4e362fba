"""host-deny against a real file: exact lines, bytes kept, atomic replace, IPv6 brackets."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from dfir_ar.errors import InvalidArgument
from dfir_ar.responder import LiveEntry, Request, ResponderContext, Target
from dfir_ar.validate import parse_ip
from responders.host_deny import HostDeny


def make(tmp_path: Path, name: str = "hosts.deny") -> tuple[HostDeny, Path]:
    path = tmp_path / name
    ctx = ResponderContext(state_dir=tmp_path, options={"path": str(path)})
    return HostDeny(ctx), path


def req(ip: str) -> Request:
    return Request(command="host-deny", target=Target(srcip=parse_ip(ip)))


def test_add_creates_file_0644_and_delete_removes_exactly_that_line(tmp_path: Path) -> None:
    hd, path = make(tmp_path)
    state = hd.add(req("203.0.113.7"))
    assert path.read_text() == "ALL: 203.0.113.7\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert hd.key(req("203.0.113.7")) == "203.0.113.7"
    hd.delete(req("203.0.113.7"), state)
    assert path.read_text() == ""


def test_delete_never_matches_a_substring(tmp_path: Path) -> None:
    hd, path = make(tmp_path)
    # Wazuh's host-deny removes by substring: undoing 203.0.113.4 would take these lines too.
    original = (
        b"# managed by hand\n"
        b"ALL: 203.0.113.45\n"
        b"sshd: 203.0.113.4\n"
        b"ALL: 203.0.113.4 # note\n"
        b"ALL:203.0.113.4\n"
        b"\xff\xfe binary junk stays\r\n"
        b"no newline at end"
    )
    path.write_bytes(original)
    os.chmod(path, 0o640)
    state = hd.add(req("203.0.113.4"))
    after_add = path.read_bytes()
    assert after_add == original + b"\nALL: 203.0.113.4\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # mode of the file kept across rename
    hd.delete(req("203.0.113.4"), state)
    assert path.read_bytes() == original + b"\n"
    assert hd.active() == {"203.0.113.45"}


def test_ipv6_uses_brackets_and_canonical_form(tmp_path: Path) -> None:
    hd, path = make(tmp_path)
    r = req("2001:DB8:0:0::7")
    hd.add(r)
    assert path.read_text() == "ALL: [2001:db8::7]\n"
    assert hd.active() == {"2001:db8::7"}
    hd.delete(r, {})
    assert path.read_text() == ""


def test_add_is_idempotent_and_delete_is_quiet_when_gone(tmp_path: Path) -> None:
    hd, path = make(tmp_path)
    hd.add(req("198.51.100.9"))
    state = hd.add(req("198.51.100.9"))
    assert state["added"] is False
    assert path.read_text().count("ALL: 198.51.100.9\n") == 1
    hd.delete(req("198.51.100.9"), {})
    hd.delete(req("198.51.100.9"), {})  # already gone: no error
    missing, missing_path = make(tmp_path, "never-written")
    missing.delete(req("198.51.100.9"), {})
    assert not missing_path.exists()


def test_parallel_adds_lose_nothing(tmp_path: Path) -> None:
    hd, path = make(tmp_path)
    ips = [f"198.51.100.{i}" for i in range(1, 61)]
    threads = [threading.Thread(target=hd.add, args=(req(ip),)) for ip in ips]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hd.active() == set(ips)
    assert len(path.read_text().splitlines()) == 60


def test_reconcile_readds_missing_lines(tmp_path: Path) -> None:
    hd, path = make(tmp_path)
    hd.add(req("203.0.113.1"))
    path.write_text("")  # drift: someone emptied the file
    live = [LiveEntry(request=req("203.0.113.1"), state={}, remaining=30.0),
            LiveEntry(request=req("203.0.113.2"), state={}, remaining=None)]
    hd.add(req("203.0.113.2"))
    report = hd.reconcile(live)
    assert report.readded == 1
    assert hd.active() == {"203.0.113.1", "203.0.113.2"}


def test_needs_srcip(tmp_path: Path) -> None:
    hd, _ = make(tmp_path)
    with pytest.raises(InvalidArgument):
        hd.add(Request(command="host-deny", target=Target(username="alice")))


def test_leaves_no_temp_files(tmp_path: Path) -> None:
    hd, _ = make(tmp_path)
    for i in range(5):
        hd.add(req(f"203.0.113.{i + 10}"))
        hd.delete(req(f"203.0.113.{i + 10}"), {})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".hosts.deny.dfir-ar.lock", "hosts.deny"]
