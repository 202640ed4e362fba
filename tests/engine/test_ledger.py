"""The SQLite ledger: WAL, 0700 state dir, atomic cursor+intent, read-only view, re-validation."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pytest

from dfir_ar.alert import Alert
from dfir_ar.errors import StateError
from dfir_ar.ids import new_id
from dfir_ar.ledger import (
    _ALERT_FIELDS,
    APPLIED,
    INTENT,
    LEDGER_FILE,
    Ledger,
    LedgerView,
    _Checkpointer,
    alert_to_dict,
    decode_request,
    encode_request,
)
from dfir_ar.responder import Request, Target
from dfir_ar.sources.base import Cursor
from dfir_ar.validate import parse_ip


def request(ip: str = "203.0.113.7") -> Request:
    alert = Alert(rule_id=5712, level=10, groups=("sshd",), id="1.2", srcip=ip,
                  raw={"rule": {"id": "5712"}, "data": {"srcip": ip}})
    return Request(command="host-deny", target=Target(srcip=parse_ip(ip)), order_id=new_id(),
                   timeout=60.0, extra_args=("-x",), alert=alert)


def test_state_dir_0700_and_wal(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "state")
    try:
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        mode = ledger._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        ledger.close()


def test_checkpoints_run_beside_the_writer_and_close_folds_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer never checkpoints (no fsync inside a commit); the checkpointer thread copies
    the WAL into the database while it runs, and close leaves an empty WAL."""
    monkeypatch.setattr(_Checkpointer, "INTERVAL", 0.05)
    ledger = Ledger.open(tmp_path)
    db, wal = tmp_path / LEDGER_FILE, tmp_path / (LEDGER_FILE + "-wal")
    try:
        assert ledger._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        start = db.stat().st_size
        for i in range(300):
            req = request(f"198.18.1.{i % 250 + 1}" if i < 250 else f"198.18.2.{i - 249}")
            with ledger.transaction() as tx:
                tx.insert_intent(command="host-deny", key=f"k{i}", order_id=req.order_id,
                                 agent_id="000", request=req, now=1.0, expires_at=None,
                                 offences=1)
        deadline = time.monotonic() + 10
        while db.stat().st_size == start and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.stat().st_size > start, "no checkpoint copied the WAL into the database"
    finally:
        ledger.close()
    assert not wal.exists() or wal.stat().st_size == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 300


def test_request_round_trip_keeps_alert_and_args() -> None:
    req = request()
    back = decode_request(encode_request(req))
    assert back.target == req.target
    assert back.extra_args == ("-x",)
    assert back.alert is not None
    assert (back.alert.id, back.alert.rule_id, back.alert.srcip) == ("1.2", 5712, "203.0.113.7")
    assert back.alert.groups == ("sshd",)
    # The spelled-out encoder writes exactly the fields the decoder reads back.
    assert req.alert is not None
    assert tuple(alert_to_dict(req.alert)) == _ALERT_FIELDS


def test_intent_then_applied_and_cursor_in_one_transaction(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    try:
        req = request()
        with ledger.transaction() as tx:
            tx.insert_intent(command="host-deny", key="203.0.113.7", order_id=req.order_id,
                             agent_id="000", request=req, now=100.0, expires_at=160.0, offences=1)
            tx.save_cursor("file:/a", "v1:1:2:300", 100.0)
        entry = ledger.get("host-deny", "203.0.113.7")
        assert entry is not None and entry.status == INTENT and entry.state is None
        assert ledger.load("file:/a") == Cursor(source="file:/a", position="v1:1:2:300")
        ledger.mark_applied("host-deny", "203.0.113.7", req.order_id, {"line": "x"}, 101.0)
        entry = ledger.get("host-deny", "203.0.113.7")
        assert entry is not None and entry.status == APPLIED and entry.state == {"line": "x"}
    finally:
        ledger.close()


def test_failed_transaction_keeps_neither_intent_nor_cursor(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    try:
        req = request()
        with pytest.raises(RuntimeError), ledger.transaction() as tx:
            tx.insert_intent(command="host-deny", key="k", order_id=req.order_id, agent_id="000",
                             request=req, now=1.0, expires_at=None, offences=1)
            tx.save_cursor("file:/a", "v1:9", 1.0)
            raise RuntimeError("crash between the two writes")
        assert ledger.entries() == []
        assert ledger.load("file:/a") is None
    finally:
        ledger.close()


def test_read_only_view_sees_committed_rows_and_cannot_write(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    req = request()
    with ledger.transaction() as tx:
        tx.insert_intent(command="host-deny", key="203.0.113.7", order_id=req.order_id,
                         agent_id="000", request=req, now=1.0, expires_at=61.0, offences=1)
    view = LedgerView.open(tmp_path)
    try:
        [entry] = view.entries()
        assert entry.key == "203.0.113.7"
        assert view.find(req.order_id)[0].key == "203.0.113.7"
        with pytest.raises(sqlite3.OperationalError):
            view._conn.execute("DELETE FROM entries")
    finally:
        view.close()
        ledger.close()


@pytest.mark.parametrize(
    "tamper",
    [
        '{"command":"host-deny","target":{"srcip":"1.2.3.4; id"}}',
        '{"command":"host-deny","target":{"srcip":"127.1"}}',
        '{"command":"host-deny","target":{"username":"-rf"}}',
        '{"command":"host-deny","target":{},"extra_args":[1]}',
        '{"command":"host-deny","target":{},"order_id":"../../x"}',
        "not json",
        "[]",
    ],
)
def test_rows_read_back_are_revalidated(tmp_path: Path, tamper: str) -> None:
    ledger = Ledger.open(tmp_path)
    try:
        req = request()
        with ledger.transaction() as tx:
            tx.insert_intent(command="host-deny", key="k", order_id=req.order_id, agent_id="000",
                             request=req, now=1.0, expires_at=None, offences=1)
        ledger._conn.execute("UPDATE entries SET request = ?", (tamper,))
        [entry] = ledger.entries()
        with pytest.raises(StateError):
            entry.request()
    finally:
        ledger.close()


def test_offenders_outlive_entries_and_purge(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    try:
        with ledger.transaction() as tx:
            tx.set_offender("host-deny", "a", 3, 100.0)
            tx.set_offender("host-deny", "b", 1, 900.0)
        assert ledger.purge_offenders(older_than=500.0) == 1
        with ledger.transaction() as tx:
            assert tx.offender("host-deny", "a") == (0, None)
            assert tx.offender("host-deny", "b") == (1, 900.0)
    finally:
        ledger.close()
