"""FileTail on real files: append, partial lines, rotation, truncation, restart from a durable
cursor, and a handler that fails mid-stream (the kill -9 case: nothing lost, nothing repeated)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from dfir_ar.alert import Alert
from dfir_ar.sources import build_sources, file_source_name
from dfir_ar.sources.base import Cursor, Rejected
from dfir_ar.sources.tail import FilePosition, FileTail

from .conftest import EXAMPLES, JsonCursorStore, Recorder, Running, make_config, wazuh_line

Start = Callable[..., Running]


def tail(path: Path, store: JsonCursorStore, **kw: object) -> FileTail:
    return FileTail(file_source_name(path), path, store, **kw)  # type: ignore[arg-type]


def ids(rec: Recorder) -> list[str | None]:
    return [a.id for a in rec.alerts]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
def test_appended_lines_are_picked_up_fast_and_partial_lines_wait(
    tmp_path: Path, run_source: Start, inotify: bool
) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(b"")
    rec = Recorder(JsonCursorStore(tmp_path / "cursors.json"))
    # With inotify the safety poll is 5 s, so only the inotify wake can deliver in time.
    source = tail(path, rec.store, use_inotify=inotify,  # type: ignore[arg-type]
                  safety_poll=5.0)
    run_source(source, rec)
    assert (source.waker is not None) is inotify
    time.sleep(0.05)
    latencies = []
    for n in range(20):
        start = time.monotonic()
        append(path, wazuh_line(n=n))
        rec.wait_for(n + 1)
        latencies.append(time.monotonic() - start)
    assert ids(rec) == [f"1795334410.{n}" for n in range(20)]
    # Typically 1-3 ms (the 10 ms budget is measured in bench/engine, not asserted here: a loaded
    # CI host can stall a thread hand-off); a tail that waited for its 5 s safety poll, or that
    # polled at APPEAR_POLL (100 ms) instead of every 2 ms, has a median of 50 ms or more.
    assert sorted(latencies)[len(latencies) // 2] < 0.030, latencies
    line = wazuh_line(n=99)
    append(path, line[:40])
    time.sleep(0.05)
    assert len(rec.items) == 20  # half a line is not an alert yet
    append(path, line[40:])
    rec.wait_for(21)
    assert rec.alerts[-1].id == "1795334410.99"
    pos = FilePosition.decode(rec.cursors[-1].position)  # type: ignore[union-attr]
    assert pos is not None and pos.offset == path.stat().st_size and pos.ino == path.stat().st_ino


def test_restart_resumes_exactly_from_the_cursor(tmp_path: Path, run_source: Start) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(b"")
    store = JsonCursorStore(tmp_path / "cursors.json")
    first = Recorder(store)
    r = run_source(tail(path, store), first)
    append(path, b"".join(wazuh_line(n=n) for n in range(5)))
    first.wait_for(5)
    r.stop()
    append(path, b"".join(wazuh_line(n=n) for n in range(5, 8)))  # written while we were down
    second = Recorder(store)
    run_source(tail(path, store), second)
    second.wait_for(3)
    time.sleep(0.05)
    assert ids(second) == [f"1795334410.{n}" for n in range(5, 8)]


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_writes_through_another_name_wake_the_tail(
    tmp_path: Path, run_source: Start, link: str
) -> None:
    """OSSEC's alerts.log is a hard link to logs/alerts/YYYY/Mon/ossec-alerts-DD.log and the
    writer writes through the dated name; a directory watch alone would not hear it. The safety
    poll is made 5 s here, so only inotify on the file itself can deliver within a second."""
    dated = tmp_path / "2026" / "Nov"
    dated.mkdir(parents=True)
    real = dated / "ossec-alerts-22.json"
    real.write_bytes(b"")
    path = tmp_path / "alerts.json"
    if link == "hard":
        os.link(real, path)
    else:
        path.symlink_to(real)
    rec = Recorder()
    run_source(tail(path, JsonCursorStore(tmp_path / "c.json"), safety_poll=5.0), rec)
    for n in range(3):
        append(real, wazuh_line(n=n))
        rec.wait_for(n + 1, timeout=3.0)  # the 5 s safety poll would be too late
    assert ids(rec) == [f"1795334410.{n}" for n in range(3)]


def test_a_crash_in_the_handler_loses_and_repeats_nothing(tmp_path: Path, run_source: Start) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(b"")
    store = JsonCursorStore(tmp_path / "cursors.json")
    crashing = Recorder(store)
    crashing.fail_after = 3
    r = run_source(tail(path, store), crashing)
    append(path, b"".join(wazuh_line(n=n) for n in range(6)))
    r.thread.join(5)
    assert isinstance(r.error, RuntimeError)  # the source stops instead of skipping alerts
    assert ids(crashing) == [f"1795334410.{n}" for n in range(3)]
    again = Recorder(store)
    run_source(tail(path, store), again)
    again.wait_for(3)
    time.sleep(0.05)
    assert ids(again) == [f"1795334410.{n}" for n in range(3, 6)]


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
def test_rotation_finishes_the_old_file_then_reads_the_new_one(
    tmp_path: Path, run_source: Start, inotify: bool
) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(b"")
    rec = Recorder(JsonCursorStore(tmp_path / "cursors.json"))
    # rotate_wait 1 s (default 0.1): the writes to the old file below must not be taken as its
    # end when the test thread stalls between them on a loaded host.
    run_source(tail(path, rec.store, use_inotify=inotify,  # type: ignore[arg-type]
                    rotate_wait=1.0), rec)
    append(path, wazuh_line(n=0))
    rec.wait_for(1)
    with path.open("ab") as old:
        path.rename(tmp_path / "alerts.json.1")
        old.write(wazuh_line(n=1))  # the writer still has the old file open
        old.flush()
        path.write_bytes(wazuh_line(n=2))  # a new file appears (another writer, or logrotate)
        time.sleep(0.02)
        old.write(wazuh_line(n=5))  # our writer has not reopened yet: still the old file
        old.write(wazuh_line(n=3)[:30])  # and it leaves a torn last line there
    rec.wait_for(5)
    append(path, wazuh_line(n=4))
    rec.wait_for(6)
    # The old file first, to its end (rotate_wait), then the new one.
    assert ids(rec) == [f"1795334410.{n}" for n in (0, 1, 5, 2, 4)]
    assert len(rec.rejected) == 1  # the torn line: refused with a reason, not silently dropped


def test_restart_after_rotation_finishes_the_rotated_file_by_inode(tmp_path: Path, run_source: Start) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(b"")
    store = JsonCursorStore(tmp_path / "cursors.json")
    first = Recorder(store)
    r = run_source(tail(path, store), first)
    append(path, wazuh_line(n=0))
    first.wait_for(1)
    r.stop()
    append(path, wazuh_line(n=1))  # unread when rotation happens
    path.rename(tmp_path / "alerts.json.1")
    path.write_bytes(wazuh_line(n=2))
    second = Recorder(store)
    run_source(tail(path, store), second)
    second.wait_for(2)
    time.sleep(0.05)
    assert ids(second) == ["1795334410.1", "1795334410.2"]


def test_restart_finds_a_file_wazuh_moved_into_a_dated_directory(
    tmp_path: Path, run_source: Start
) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(b"")
    store = JsonCursorStore(tmp_path / "cursors.json")
    first = Recorder(store)
    r = run_source(tail(path, store), first)
    append(path, wazuh_line(n=0))
    first.wait_for(1)
    r.stop()
    append(path, wazuh_line(n=1))
    dated = tmp_path / "2026" / "Nov"
    dated.mkdir(parents=True)
    path.rename(dated / "ossec-alerts-22.json")  # what Wazuh's monitord does at midnight
    path.write_bytes(wazuh_line(n=2))
    second = Recorder(store)
    run_source(tail(path, store), second)
    second.wait_for(2)
    time.sleep(0.05)
    assert ids(second) == ["1795334410.1", "1795334410.2"]


def test_truncation_restarts_at_zero(tmp_path: Path, run_source: Start) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(b"")
    rec = Recorder(JsonCursorStore(tmp_path / "cursors.json"))
    run_source(tail(path, rec.store), rec)  # type: ignore[arg-type]
    append(path, wazuh_line(n=0) + wazuh_line(n=1))
    rec.wait_for(2)
    with path.open("r+b") as f:  # copytruncate
        f.truncate(0)
    time.sleep(0.05)
    append(path, wazuh_line(n=2))
    rec.wait_for(3)
    assert ids(rec)[-1] == "1795334410.2"


def test_truncation_while_down_is_detected_on_start(tmp_path: Path, run_source: Start) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(wazuh_line(n=0) * 3)
    store = JsonCursorStore(tmp_path / "cursors.json")
    st = path.stat()
    store.save(tail(path, store).cursor_store.load("x") or _cursor(path, st.st_size))
    path.write_bytes(wazuh_line(n=7))  # same inode, shorter than the cursor
    rec = Recorder(store)
    run_source(tail(path, store), rec)
    rec.wait_for(1)
    assert ids(rec) == ["1795334410.7"]


def _cursor(path: Path, offset: int):  # type: ignore[no-untyped-def]
    from dfir_ar.sources.base import Cursor

    st = path.stat()
    return Cursor(file_source_name(path), FilePosition(st.st_dev, st.st_ino, offset).encode())


def test_first_start_follows_from_the_end_unless_told_otherwise(tmp_path: Path, run_source: Start) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(wazuh_line(n=0) + wazuh_line(n=1))
    rec = Recorder()
    run_source(tail(path, JsonCursorStore(tmp_path / "a.json")), rec)
    time.sleep(0.05)
    append(path, wazuh_line(n=2))
    rec.wait_for(1)
    time.sleep(0.03)
    assert ids(rec) == ["1795334410.2"]  # the two lines before the start are history
    whole = Recorder()
    run_source(tail(path, JsonCursorStore(tmp_path / "b.json"), start_at="beginning"), whole)
    whole.wait_for(3)
    assert ids(whole) == [f"1795334410.{n}" for n in range(3)]


def test_ossec_log_followed_from_its_end_skips_the_block_in_progress(
    tmp_path: Path, run_source: Start
) -> None:
    data = (EXAMPLES / "ossec-ssh-bruteforce.log").read_bytes()
    cut = data.index(b"Rule: 5712", data.index(b"** Alert 1795335305"))
    path = tmp_path / "alerts.log"
    path.write_bytes(data[:cut])  # ten blocks of history and half of the eleventh
    rec = Recorder()
    run_source(tail(path, JsonCursorStore(tmp_path / "c.json")), rec)
    append(path, data[cut:] + data[: data.index(b"** Alert", 10)])  # its rest, then a new block
    rec.wait_for(1)
    time.sleep(0.05)
    # The half block's tail is not refused line by line; the new block is delivered.
    assert ids(rec) == ["1795334400.1000"] and rec.rejected == [], rec.items


def test_waits_for_the_file_and_reads_it_from_the_start(tmp_path: Path, run_source: Start) -> None:
    path = tmp_path / "later.json"
    rec = Recorder()
    run_source(tail(path, JsonCursorStore(tmp_path / "c.json")), rec, wait=False)
    time.sleep(0.05)
    path.write_bytes(wazuh_line(n=0))
    rec.wait_for(1)


def test_ossec_alerts_log_with_blocks_split_across_writes(tmp_path: Path, run_source: Start) -> None:
    path = tmp_path / "alerts.log"
    path.write_bytes(b"")
    store = JsonCursorStore(tmp_path / "cursors.json")
    rec = Recorder(store)
    r = run_source(tail(path, store), rec)
    data = (EXAMPLES / "ossec-ssh-bruteforce.log").read_bytes()
    half = data.index(b"Rule: 5710", data.index(b"** Alert 1795335300"))  # inside the 10th block
    append(path, data[:half])
    rec.wait_for(9)
    time.sleep(0.03)
    assert len(rec.items) == 9  # the 10th block is incomplete
    r.stop()
    append(path, data[half:])
    again = Recorder(store)
    run_source(tail(path, store), again)
    again.wait_for(2)
    time.sleep(0.03)
    assert ids(again) == ["1795335300.4339", "1795335305.4710"]  # the 10th block, then the 11th
    assert all(isinstance(i, Alert) for i in again.items)


def test_build_sources_from_config_and_extra_paths(tmp_path: Path) -> None:
    store = JsonCursorStore(tmp_path / "cursors.json")
    cfg = make_config(source=[
        {"type": "file", "path": str(tmp_path / "a.json"), "format": "wazuh", "start_at": "beginning"},
        {"type": "http", "listen": "127.0.0.1:0", "token": "t" * 32},
        {"type": "stdin"},
    ])
    sources = build_sources(cfg, store, [tmp_path / "b.log"])
    assert [s.name for s in sources] == [
        f"file:{tmp_path / 'a.json'}", "http:127.0.0.1:0", "stdin", f"file:{tmp_path / 'b.log'}"
    ]
    from dfir_ar.errors import ConfigError

    with pytest.raises(ConfigError, match="already followed"):
        build_sources(cfg, store, [tmp_path / "a.json"])
    os.chdir(tmp_path)
    with pytest.raises(ConfigError, match="already followed"):
        build_sources(make_config(), store, [Path("x.json"), tmp_path / "x.json"])


class BatchRecorder(Recorder):
    """A BatchHandler: records each ``many`` call's size and cursor, as serve's intake does."""

    def __init__(self, store: JsonCursorStore) -> None:
        super().__init__(store)
        self.batches: list[tuple[int, str]] = []

    def many(self, items: Sequence[Alert | Rejected], cursor: Cursor | None) -> None:
        with self.lock:
            self.items.extend(items)
            assert cursor is not None and self.store is not None
            self.batches.append((len(items), cursor.position))
            self.store.save(cursor)


def test_a_batch_handler_gets_a_reads_records_at_once_with_the_last_cursor(
    tmp_path: Path, run_source: Start
) -> None:
    from dfir_ar.sources.tail import BATCH

    path = tmp_path / "alerts.json"
    lines = [wazuh_line(n=n) for n in range(BATCH * 2 + 100)]
    path.write_bytes(b"".join(lines))
    rec = BatchRecorder(JsonCursorStore(tmp_path / "cursors.json"))
    source = tail(path, rec.store, start_at="beginning")  # type: ignore[arg-type]
    running = run_source(source, rec)
    rec.wait_for(len(lines))
    running.stop()
    assert ids(rec) == [f"1795334410.{n}" for n in range(len(lines))]
    assert [size for size, _ in rec.batches] == [BATCH, BATCH, 100]  # one read, capped batches
    # Each batch's cursor is the offset just after its last record, so a restart after any
    # batch resumes exactly there.
    ends = [sum(len(line) for line in lines[: BATCH * (i + 1)]) for i in range(2)] + [
        sum(map(len, lines))
    ]
    assert [int(pos.rsplit(":", 1)[1]) for _, pos in rec.batches] == ends
    assert rec.cursors == []  # the per-record path was not used


def test_a_directory_created_later_is_watched_with_inotify_not_polled(
    tmp_path: Path, run_source: Start
) -> None:
    """dfir-ar started before Wazuh: no directory to watch yet. Once it exists the tail waits on
    inotify again (a 2 ms poll for the rest of the run would be a busy loop on every host)."""
    path = tmp_path / "ossec" / "alerts" / "alerts.json"
    rec = Recorder(JsonCursorStore(tmp_path / "cursors.json"))
    source = tail(path, rec.store)  # type: ignore[arg-type]
    running = run_source(source, rec, wait=False)
    time.sleep(0.2)
    assert source.waker is None  # nothing to watch yet
    path.parent.mkdir(parents=True)
    deadline = time.monotonic() + 5
    while source.waker is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert source.waker is not None, "the watch was never set up once the directory existed"
    append(path, wazuh_line(n=1))
    rec.wait_for(1)
    append(path, wazuh_line(n=2))
    rec.wait_for(2)
    running.stop()
    assert ids(rec) == ["1795334410.1", "1795334410.2"]
