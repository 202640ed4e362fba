"""YARA collector: planted hits found (and not through excludes or symlinks out of the tree), an
invalid rule as a config error naming file and line, the compiled-rules cache, a live process's
memory, vanished pids, and deadline/cancel."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from collectors import yara_scan
from collectors.yara_scan import YaraScan, YaraSettings
from dfir_ar.collector import CollectJob, CollectorContext, Status
from dfir_ar.config import load_config
from dfir_ar.errors import ConfigError
from dfir_ar.evidence.bundle import BundleWriter
from dfir_ar.responder import Target
from tests.collectors.yara_helpers import no_worker_left  # noqa: F401 - autouse
from tests.conftest import require_root
from tests.evidence.helpers import read_members, seal

PLANT = b"ym-planted-" + hashlib.sha256(b"dfir-ar yara test").hexdigest()[:16].encode()
RULE = f"""
rule ym_planted : test planted {{
    meta:
        author = "dfir-ar tests"
        severity = 3
    strings:
        $p = "{PLANT.decode()}"
    condition:
        $p
}}
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "planted.yar").write_text(RULE)
    (d / "README.txt").write_text("not a rule file, ignored")
    return d


def make_job(args: list[str], *, timeout: float = 60.0) -> CollectJob:
    return CollectJob(
        target=Target(),
        options=YaraScan.parse_options(args),
        deadline=time.monotonic() + timeout,
        max_bytes=1 << 30,
    )


def scanner(tmp_path: Path, rules: Path, **settings: object) -> YaraScan:
    return YaraScan(
        CollectorContext(state_dir=tmp_path / "state", settings={"rules": [str(rules)], **settings})
    )


def jsonl(members: dict[str, bytes], name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in members[f"artifacts/yara/{name}"].splitlines()]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """A scan root with hits in plain files; hits that must NOT be found sit in an excluded dir,
    behind symlinks that point out of the tree, in a FIFO and in a file over the size cap."""
    root = tmp_path / "scan"
    outside = tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (root / "skip-me").mkdir()
    outside.mkdir()
    (root / "a" / "hit1.bin").write_bytes(b"\0" * 1000 + PLANT + b"\0" * 10)
    (root / "a" / "b" / "hit2.txt").write_bytes(PLANT + b" and again " + PLANT)
    (root / "a" / "clean.txt").write_bytes(b"nothing to see" * 100)
    (root / "a" / "empty").write_bytes(b"")
    (root / "skip-me" / "hit.bin").write_bytes(PLANT)
    (root / "a" / "x.tmp").write_bytes(PLANT)
    (outside / "secret.bin").write_bytes(PLANT)
    (root / "link-to-outside-dir").symlink_to(outside)
    (root / "a" / "link-to-outside-file").symlink_to(outside / "secret.bin")
    (root / "big.bin").write_bytes(PLANT + bytes(2 * 1024 * 1024))
    os.mkfifo(root / "a" / "fifo")
    yield root


@pytest.mark.parametrize("engine", ["yara-x", "libyara"])
def test_planted_hits_found_and_nothing_outside_the_tree(
    tmp_path: Path, rules_dir: Path, tree: Path, bundle_writer: Callable[..., BundleWriter],
    engine: str,
) -> None:
    scan = scanner(tmp_path, rules_dir, exclude=["*/skip-me", "*.tmp"], threads=2, engine=engine)
    writer = bundle_writer("yara")
    progress: list[str] = []
    job = make_job(["--path", str(tree), "--max-file-mb", "1", "--memory", "none"])
    job.progress = lambda msg, frac: progress.append(msg)
    outcome = scan.collect(job, writer)
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.OK, outcome.reason
    matches = jsonl(read_members(result.path), "matches.jsonl")
    found = sorted(str(m["target"]["path"]) for m in matches)
    assert found == sorted([str(tree / "a" / "hit1.bin"), str(tree / "a" / "b" / "hit2.txt")])
    hit1 = next(m for m in matches if str(m["target"]["path"]).endswith("hit1.bin"))
    assert hit1["rule"] == "ym_planted"
    assert hit1["tags"] == ["test", "planted"]
    assert hit1["meta"] == {"author": "dfir-ar tests", "severity": 3}
    digest = hashlib.sha256((tree / "a" / "hit1.bin").read_bytes()).hexdigest()
    assert hit1["target"]["sha256"] == digest
    (string,) = hit1["strings"]
    assert string["identifier"] == "$p"
    assert string["instances"] == [{"offset": 1000, "length": len(PLANT), "data_hex": PLANT.hex()}]
    hit2 = next(m for m in matches if str(m["target"]["path"]).endswith("hit2.txt"))
    assert hit2["strings"][0]["instances_total"] == 2
    d = outcome.details
    assert d["files_scanned"] == 4  # hit1, hit2, clean, empty
    assert d["files_matched"] == 2 and d["matches"] == 2
    assert d["excluded"] == 2  # skip-me/ and x.tmp
    assert d["symlinks_skipped"] == 2
    assert d["special_skipped"] == 1  # the FIFO: never opened
    assert d["skipped_large"] == 1
    assert d["unreadable"] == 0
    assert progress and "files" in progress[-1]
    assert d["engine"] == engine


def test_invalid_rule_is_a_config_error_naming_file_and_line(tmp_path: Path, rules_dir: Path) -> None:
    bad = rules_dir / "broken.yar"
    bad.write_text('rule broken {\n  strings:\n    $a = "x"\n  condition:\n    $a and\n}\n')
    with pytest.raises(ValidationError) as err:
        YaraSettings.model_validate({"rules": [str(rules_dir)]})
    assert f"{bad}(6)" in str(err.value)
    # The same through `dfir-ar config check`'s loader: file, block and rule line in one message.
    cfg = tmp_path / "dfir-ar.toml"
    cfg.write_text(
        f'[global]\nstate_dir = "{tmp_path}/state"\n\n[collectors.yara]\nrules = ["{rules_dir}"]\n'
    )
    with pytest.raises(ConfigError) as cerr:
        load_config(cfg)
    msg = str(cerr.value)
    assert "[collectors.yara], rules: invalid YARA rule:" in msg
    assert f"{bad}(6)" in msg and "syntax error" in msg


def test_missing_rules_table_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[collectors.yara\]: rules: Field required"):
        YaraScan(CollectorContext(state_dir=tmp_path, settings={}))


def test_missing_and_relative_rule_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="does not exist"):
        YaraSettings.model_validate({"rules": [str(tmp_path / "nope.yar")]})
    with pytest.raises(ValidationError, match="absolute"):
        YaraSettings.model_validate({"rules": ["rules/x.yar"]})
    empty = tmp_path / "empty-rules"
    empty.mkdir()
    with pytest.raises(ValidationError, match=r"no \.yar"):
        YaraSettings.model_validate({"rules": [str(empty)]})


def test_rules_compiled_once_and_cached_on_disk_by_hash(tmp_path: Path, rules_dir: Path) -> None:
    scan = scanner(tmp_path, rules_dir)
    digest = scan._settings.digest
    cached = tmp_path / "state" / "yara-cache" / f"{digest}.yarc"
    assert cached.is_file()
    # A fresh process (simulated by clearing the in-process cache) loads the saved rules.
    yara_scan._compiled.clear()
    mtime = cached.stat().st_mtime_ns
    again = scanner(tmp_path, rules_dir)
    assert again._settings.digest == digest and cached.stat().st_mtime_ns == mtime
    assert again._settings.compiled().match(data=PLANT)
    # An edited rule is a different digest: recompiled, never served stale from the cache.
    (rules_dir / "planted.yar").write_text(RULE.replace("ym_planted", "ym_renamed"))
    renamed = scanner(tmp_path, rules_dir)
    assert renamed._settings.digest != digest
    assert [m.rule for m in renamed._settings.compiled().match(data=PLANT)] == ["ym_renamed"]


CHILD = """
import sys, time
marker = sys.argv[1][::-1].encode()
held = [marker * 4 for _ in range(8)]
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def marked_child() -> Iterator[subprocess.Popen[bytes]]:
    # The marker exists in the child's heap only (argv holds it reversed).
    proc = subprocess.Popen([sys.executable, "-c", CHILD, PLANT.decode()[::-1]], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_process_memory_hit_and_vanished_pid(
    tmp_path: Path, rules_dir: Path, marked_child: subprocess.Popen[bytes],
    bundle_writer: Callable[..., BundleWriter],
) -> None:
    require_root()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    scan = scanner(tmp_path, rules_dir)
    writer = bundle_writer("yara")
    outcome = scan.collect(
        make_job(["--pid", str(marked_child.pid), "--pid", str(gone.pid), "--memory", "pids"]), writer
    )
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.PARTIAL
    assert f"vanished): [{gone.pid}]" in outcome.reason
    members = read_members(result.path)
    matches = jsonl(members, "matches.jsonl")
    assert [m["target"]["pid"] for m in matches] == [marked_child.pid]
    assert matches[0]["target"]["comm"].startswith("python")
    inst = matches[0]["strings"][0]["instances"]
    assert inst and all(bytes.fromhex(i["data_hex"]) == PLANT for i in inst)
    fd = os.open(f"/proc/{marked_child.pid}/mem", os.O_RDONLY)
    try:  # offsets of a process match are addresses in that process
        assert os.pread(fd, len(PLANT), inst[0]["offset"]) == PLANT
    finally:
        os.close(fd)
    problems = jsonl(members, "problems.jsonl")
    assert {"type": "process", "pid": gone.pid, "error": "process vanished"} in problems
    assert outcome.details["pids_scanned"] == 1 and outcome.details["pids_vanished"] == 1


@pytest.mark.parametrize("engine", ["yara-x", "libyara"])
def test_cancel_and_deadline_stop_between_files(
    tmp_path: Path, rules_dir: Path, tree: Path, bundle_writer: Callable[..., BundleWriter],
    engine: str,
) -> None:
    scan = scanner(tmp_path, rules_dir, engine=engine)
    writer = bundle_writer("yara")
    job = make_job(["--path", str(tree), "--memory", "none"])
    job.cancel = threading.Event()
    job.cancel.set()
    outcome = scan.collect(job, writer)
    _, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.PARTIAL and "cancelled" in outcome.reason
    assert outcome.details["files_scanned"] == 0

    writer = bundle_writer("yara")
    outcome = scan.collect(make_job(["--path", str(tree), "--duration", "0.000001"]), writer)
    _, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.PARTIAL and "deadline" in outcome.reason


def test_yarax_files_and_libyara_memory_in_one_collection(
    tmp_path: Path, rules_dir: Path, tree: Path, marked_child: subprocess.Popen[bytes],
    bundle_writer: Callable[..., BundleWriter],
) -> None:
    require_root()
    scan = scanner(tmp_path, rules_dir, engine="yara-x", exclude=["*/skip-me", "*.tmp"])
    writer = bundle_writer("yara")
    outcome = scan.collect(make_job(["--path", str(tree / "a"), "--pid", str(marked_child.pid),
                                     "--memory", "pids"]), writer)
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.OK, outcome.reason
    assert outcome.details["engine"] == "yara-x" and outcome.details["pids_scanned"] == 1
    matches = jsonl(read_members(result.path), "matches.jsonl")
    assert sorted(m["target"]["type"] for m in matches) == ["file", "file", "process"]
    assert {m["target"].get("pid") for m in matches} == {None, marked_child.pid}


def test_nothing_to_scan_and_bad_options_are_clear(tmp_path: Path, rules_dir: Path,
                                                   bundle_writer: Callable[..., BundleWriter]) -> None:
    scan = scanner(tmp_path, rules_dir)
    outcome = scan.collect(make_job([]), bundle_writer("yara"))
    assert outcome.status is Status.FAILED and "nothing to scan" in outcome.reason
    from dfir_ar.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="--memory"):
        scan.collect(make_job(["--memory", "some"]), bundle_writer("yara2"))
    with pytest.raises(InvalidArgument, match="--pid"):
        scan.collect(make_job(["--pid", "12; rm -rf /"]), bundle_writer("yara3"))
    with pytest.raises(InvalidArgument, match="absolute"):
        scan.collect(make_job(["--path", "relative/dir"]), bundle_writer("yara4"))


def test_missing_path_is_counted_and_recorded(
    tmp_path: Path, rules_dir: Path, tree: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    scan = scanner(tmp_path, rules_dir)
    writer = bundle_writer("yara")
    gone = tmp_path / "no-such-dir"
    outcome = scan.collect(
        make_job(["--path", str(gone), "--path", str(tree / "a" / "b"), "--memory", "none"]), writer
    )
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.OK
    assert outcome.details["unreadable"] == 1 and outcome.details["files_matched"] == 1
    problems = jsonl(read_members(result.path), "problems.jsonl")
    assert problems == [{"path": str(gone), "error": "No such file or directory"}]


def test_memory_all_selects_user_processes_only(
    tmp_path: Path, rules_dir: Path, marked_child: subprocess.Popen[bytes]
) -> None:
    require_root()
    scan = scanner(tmp_path, rules_dir)
    pids = scan.select_pids("all", [], make_job([]))
    assert marked_child.pid in pids
    assert os.getpid() not in pids  # never itself (libyara would attach to its own threads)
    assert 2 not in pids  # kthreadd: a kernel thread has no user memory
    job = make_job([])
    assert scan.select_pids("auto", [], job) == []
    assert scan.select_pids("auto", [marked_child.pid], job) == [marked_child.pid]


def test_srcip_mode_scans_the_processes_talking_to_the_address(
    tmp_path: Path, rules_dir: Path, bundle_writer: Callable[..., BundleWriter]
) -> None:
    require_root()
    import socket

    from dfir_ar.validate import parse_ip

    # Any 127/8 address is loopback; a private one keeps other test servers out of the match.
    peer = f"127.{os.getpid() % 200 + 20}.{os.getpid() % 250 + 1}.10"
    code = CHILD.replace(
        'print("ready"', f"import socket; s = socket.create_connection(({peer!r}, PORT))\nprint(\"ready\""
    )
    with socket.socket() as srv:
        srv.bind((peer, 0))
        srv.listen(1)
        code = code.replace("PORT", str(srv.getsockname()[1]))
        proc = subprocess.Popen([sys.executable, "-c", code, PLANT.decode()[::-1]], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            conn, _ = srv.accept()
            with conn:
                job = make_job([])
                job.target = Target(srcip=parse_ip(peer))
                writer = bundle_writer("yara")
                outcome = scanner(tmp_path, rules_dir).collect(job, writer)
                result, report = seal(writer, outcome)
        finally:
            proc.kill()
            proc.wait()
    assert report.ok, report.problems
    assert outcome.status is Status.OK, outcome.reason
    assert outcome.details["pids"] == [proc.pid]
    matches = jsonl(read_members(result.path), "matches.jsonl")
    assert [m["target"]["pid"] for m in matches] == [proc.pid]
    # And with nobody talking to the address: nothing to scan is a fact, not a failure.
    job = make_job([])
    job.target = Target(srcip=parse_ip("203.0.113.77"))
    outcome = scanner(tmp_path, rules_dir).collect(job, bundle_writer("yara"))
    assert outcome.status is Status.OK and "no process had a connection" in outcome.details["note"]
