"""YARA collector scheduling: batches, the queue's order, and the collector end to end through
both ways a file reaches libyara (read into memory, or mapped by libyara), a queue that fills up
(the walk waits for the threads), the byte cap, and the same findings as the yara CLI."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collectors import yara_scan
from collectors.yara_file import READ_MAX
from collectors.yara_scan import YaraScan
from collectors.yara_work import (
    FileBatch,
    FileItem,
    PidWork,
    WorkQueue,
    batches,
)
from dfir_ar.clock import FakeClock
from dfir_ar.collector import CollectJob, CollectorContext, Status
from dfir_ar.evidence.bundle import BundleWriter
from dfir_ar.responder import Target
from tests.collectors.yara_helpers import no_worker_left  # noqa: F401 - autouse
from tests.evidence.helpers import read_members, seal

MiB = 1024 * 1024
PLANT = b"ym-work-" + hashlib.sha256(b"dfir-ar yara scheduling").hexdigest()[:16].encode()
RULES = f"""
rule ym_work_planted : planted {{
    strings:
        $p = "{PLANT.decode()}"
    condition:
        $p
}}
rule ym_work_header {{
    strings:
        $h = {{ 7F 45 4C 46 ?? 01 }}
    condition:
        $h at 0
}}
"""


def items(*sizes: int) -> list[FileItem]:
    return [FileItem(f"/f{i}", s) for i, s in enumerate(sizes)]


def test_batches_group_small_files_and_leave_big_ones_alone() -> None:
    got = list(batches(items(10, 20, 5000, 30, 40, 50), max_bytes=100, max_files=3))
    assert [[f.path for f in b.files] for b in got] == [
        ["/f2"], ["/f0", "/f1", "/f3"], ["/f4", "/f5"],
    ]
    assert [b.nbytes for b in got] == [5000, 60, 90]
    # Closed at the byte limit too, and nothing is lost or duplicated.
    sizes = [random.Random(7).randrange(0, 300) for _ in range(500)]
    got = list(batches(items(*sizes), max_bytes=1000, max_files=64))
    paths = [f.path for b in got for f in b.files]
    assert sorted(paths) == sorted(f"/f{i}" for i in range(500)) and len(paths) == 500
    assert all(b.nbytes == sum(f.size for f in b.files) for b in got)
    assert all(b.nbytes - b.files[-1].size < 1000 for b in got)
    assert list(batches([])) == []


def batch(n: int) -> FileBatch:
    return FileBatch((FileItem(f"/b{n}", n),), n)


def test_queue_is_walk_order_then_biggest_first_and_ends_each_thread() -> None:
    q = WorkQueue(maxsize=10)
    for w in (batch(5), PidWork(1), batch(50)):
        assert q.put(w, timeout=1)
    assert q.get() == batch(5)  # open: first in, first out
    for w in (batch(7), batch(900), PidWork(2), batch(1)):
        assert q.put(w, timeout=1)
    assert q.close() == []
    order = [q.get() for _ in range(6)]
    assert order == [PidWork(1), PidWork(2), batch(900), batch(50), batch(7), batch(1)]
    assert q.get() is None and q.get() is None  # one end marker for every thread


def test_queue_full_put_times_out_then_waits_for_a_taker_and_discard_drops() -> None:
    q = WorkQueue(maxsize=2)
    assert q.put(batch(1), timeout=1) and q.put(batch(2), timeout=1)
    started = time.monotonic()
    assert not q.put(batch(3), timeout=0.05)
    assert time.monotonic() - started >= 0.04
    taken: list[object] = []
    taker = threading.Timer(0.05, lambda: taken.append(q.get()))
    taker.start()
    assert q.put(batch(3), timeout=5)  # room made by the other thread
    taker.join()
    assert taken == [batch(1)]
    assert q.close(discard=True) == [batch(2), batch(3)]
    assert q.get() is None


def write_tree(root: Path, n_small: int) -> dict[str, list[int]]:
    """Small files (read path) and files over READ_MAX (libyara's mapped path), hits planted at
    known offsets; returns path -> offsets of the planted string."""
    rnd = random.Random(3)
    planted: dict[str, list[int]] = {}
    for i in range(n_small):
        d = root / f"d{i % 9}"
        d.mkdir(parents=True, exist_ok=True)
        data = bytearray(rnd.randbytes(rnd.choice([0, 10, 700, 5000, 40_000])))
        path = d / f"s{i:04d}"
        if i % 17 == 0 and len(data) > len(PLANT) * 2:
            at = len(data) // 3
            data[at : at + len(PLANT)] = PLANT
            planted[str(path)] = [at]
        path.write_bytes(data)
    for j, size in enumerate([READ_MAX + 1, 3 * MiB, 5 * MiB + 7]):
        data = bytearray(rnd.randbytes(size))
        offs = [17, size - len(PLANT)] if j != 1 else []
        for at in offs:
            data[at : at + len(PLANT)] = PLANT
        if j == 1:
            data[:6] = bytes.fromhex("7f454c460201")
        path = root / f"big{j}.bin"
        path.write_bytes(data)
        if offs:
            planted[str(path)] = offs
    return planted


def collect(tmp_path: Path, rules: Path, tree: Path, writer: BundleWriter,
            **settings: Any) -> tuple[Any, list[dict[str, Any]]]:
    scan = YaraScan(CollectorContext(state_dir=tmp_path / "state",
                                     settings={"rules": [str(rules)], **settings}))
    job = CollectJob(
        target=Target(), options=YaraScan.parse_options(["--path", str(tree), "--memory", "none"]),
        deadline=time.monotonic() + 120, max_bytes=1 << 30,
    )
    outcome = scan.collect(job, writer)
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    lines = read_members(result.path)["artifacts/yara/matches.jsonl"].splitlines()
    return outcome, [json.loads(line) for line in lines]


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "work.yar"
    path.write_text(RULES)
    return path


@pytest.mark.parametrize("engine", ["yara-x", "libyara"])
def test_read_and_mapped_files_report_the_same_offsets_and_hashes_with_a_full_queue(
    tmp_path: Path, rules_file: Path, bundle_writer: Callable[..., BundleWriter],
    monkeypatch: pytest.MonkeyPatch, engine: str,
) -> None:
    tree = tmp_path / "tree"
    planted = write_tree(tree, 400)
    # Two batches ahead of the threads: the walk has to wait for them over and over.
    monkeypatch.setattr(yara_scan, "QUEUE_DEPTH", 2)
    outcome, matches = collect(tmp_path, rules_file, tree, bundle_writer("yara"), threads=2,
                               engine=engine)
    assert outcome.status is Status.OK, outcome.reason
    d = outcome.details
    assert d["engine"] == engine
    files = [p for p in tree.rglob("*") if p.is_file()]
    assert d["files_scanned"] == len(files) == 403
    assert d["bytes_scanned"] == sum(p.stat().st_size for p in files)
    hits = {m["target"]["path"]: m for m in matches if m["rule"] == "ym_work_planted"}
    assert set(hits) == set(planted)
    for path, offsets in planted.items():
        (string,) = hits[path]["strings"]
        assert [i["offset"] for i in string["instances"]] == offsets
        assert all(bytes.fromhex(i["data_hex"]) == PLANT for i in string["instances"])
        data = Path(path).read_bytes()
        assert hits[path]["target"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert hits[path]["target"]["size"] == len(data)
    header = [m["target"]["path"] for m in matches if m["rule"] == "ym_work_header"]
    assert header == [str(tree / "big1.bin")]  # `at 0` on a mapped file
    assert d["files_matched"] == len(planted) + 1 and d["matches"] == len(matches)


def test_byte_cap_stops_the_scan_partial_with_a_well_formed_bundle(
    tmp_path: Path, rules_file: Path, bundle_writer: Callable[..., BundleWriter],
) -> None:
    tree = tmp_path / "tree"
    planted = write_tree(tree, 400)
    assert len(planted) > 5
    # Room for the bundle's own records and about one match line.
    outcome, matches = collect(tmp_path, rules_file, tree, bundle_writer("yara", max_bytes=2000))
    assert outcome.status is Status.PARTIAL and "byte cap reached" in outcome.reason
    assert len(matches) < len(planted)


@pytest.mark.parametrize("engine", ["yara-x", "libyara"])
def test_deadline_mid_scan_drops_the_queued_work(
    tmp_path: Path, rules_file: Path, bundle_writer: Callable[..., BundleWriter],
    monkeypatch: pytest.MonkeyPatch, engine: str,
) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, 400)
    monkeypatch.setattr(yara_scan, "QUEUE_DEPTH", 2)
    clock = FakeClock()
    scan = YaraScan(CollectorContext(state_dir=tmp_path / "state",
                                     settings={"rules": [str(rules_file)], "engine": engine}))
    job = CollectJob(
        target=Target(), options=YaraScan.parse_options(["--path", str(tree), "--memory", "none"]),
        deadline=clock.monotonic() + 60, max_bytes=1 << 30, clock=clock,
    )
    # The first progress report comes right after the first batch is queued: time runs out there.
    job.progress = lambda message, fraction: clock.advance(61)
    writer = bundle_writer("yara")
    outcome = scan.collect(job, writer)
    _, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.PARTIAL and "deadline reached" in outcome.reason
    # At most the batches already taken by the two threads were scanned (64 files each); YARA-X
    # workers holding batches at the deadline were killed (none left: no_worker_left).
    assert outcome.details["files_scanned"] <= 2 * 64 < 403
    assert outcome.details["engine"] == engine


@pytest.mark.skipif(shutil.which("yara") is None, reason="the yara CLI is not installed")
@pytest.mark.parametrize("engine", ["yara-x", "libyara"])
def test_same_findings_as_the_yara_cli(
    tmp_path: Path, rules_file: Path, bundle_writer: Callable[..., BundleWriter], engine: str,
) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, 300)
    cli = subprocess.run(["yara", "-r", "-p", "2", str(rules_file), str(tree)],
                         capture_output=True, text=True, check=True, timeout=120)
    theirs = {tuple(line.split(" ", 1)) for line in cli.stdout.splitlines()}
    _, matches = collect(tmp_path, rules_file, tree, bundle_writer("yara"), threads=2,
                         engine=engine)
    ours = {(m["rule"], m["target"]["path"]) for m in matches}
    assert ours == theirs and len(ours) > 10
