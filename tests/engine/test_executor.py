"""The executor on a FakeClock with the real host-deny responder and real subprocesses."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import ClassVar

import psutil
import pytest

from dfir_ar import procs
from dfir_ar.arlog import read_audit
from dfir_ar.clock import FakeClock, SystemClock
from dfir_ar.config.models import Config
from dfir_ar.errors import ExecutionError
from dfir_ar.executor import Executor
from dfir_ar.ledger import APPLIED, INTENT, Ledger
from dfir_ar.responder import Arg, Request, Responder, State
from dfir_ar.sources.base import Cursor
from dfir_ar.validate import parse_network
from tests.engine.conftest import Engine, engine_config, order

AR_LINE = re.compile(
    r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} active-response/bin/host-deny: "
    r"(Starting|Ended|Aborted|\{.*\})$"
)


def audit(engine: Engine) -> list[dict[str, object]]:
    return read_audit(engine.config.global_.log_dir / "audit.jsonl")


def test_add_refresh_escalate_expire(engine: Engine, clock: FakeClock) -> None:
    ex = engine.executor
    first = ex.submit(order("203.0.113.7", clock=clock)).result()
    assert (first.outcome, first.offences, first.expires_at) == ("ok", 1, clock.now() + 60)
    assert engine.deny_lines() == ["ALL: 203.0.113.7"]
    assert ex.next_deadline() == clock.now() + 60

    clock.advance(30)
    second = ex.submit(order("203.0.113.7", clock=clock)).result()
    # 2nd offence: repeated_offenders[0] = 5 minutes from now.
    assert (second.action, second.outcome, second.offences) == ("refresh", "refreshed", 2)
    assert second.expires_at == clock.now() + 300
    assert engine.deny_lines() == ["ALL: 203.0.113.7"]  # dedup: no second line

    clock.advance(60)  # the original deadline passed: nothing may be undone
    assert [t.result() for t in ex.expire_due()] == []
    assert engine.deny_lines() == ["ALL: 203.0.113.7"]

    clock.advance(240)
    [done] = [t.result() for t in ex.expire_due()]
    assert (done.action, done.outcome) == ("delete", "ok")
    assert engine.deny_lines() == []
    assert engine.ledger.entries() == []

    # The counter survives the undo: a third offence gets repeated_offenders[1] = 10 min.
    clock.advance(10)
    third = ex.submit(order("203.0.113.7", clock=clock)).result()
    assert (third.action, third.offences, third.expires_at) == ("add", 3, clock.now() + 600)

    lines = (engine.config.global_.log_dir / "active-responses.log").read_text().splitlines()
    assert lines and all(AR_LINE.match(line) for line in lines)
    messages = [json.loads(line.split(": ", 1)[1]) for line in lines if line.endswith("}")]
    # The repeat is logged the way Wazuh logs it: add, then Aborted (the key was active).
    assert [m["command"] for m in messages] == ["add", "add", "delete", "add"]
    assert [line.split(": ", 1)[1] for line in lines if not line.endswith("}")] == [
        "Starting", "Ended", "Starting", "Aborted", "Starting", "Ended", "Starting", "Ended"]
    assert messages[0]["parameters"]["alert"]["data"]["srcip"] == "203.0.113.7"
    actions = [(r["action"], r["outcome"]) for r in audit(engine)]
    assert actions == [("add", "ok"), ("refresh", "refreshed"), ("delete", "ok"), ("add", "ok")]


def test_offender_counter_decays_after_window(tmp_path: Path, clock: FakeClock) -> None:
    eng = Engine(tmp_path, engine_config(tmp_path, offender_window=3600), clock)
    try:
        eng.executor.submit(order("203.0.113.8", clock=clock)).result()
        clock.advance(61)
        eng.executor.expire_due(wait=True)
        clock.advance(3600)  # beyond the window since the last offence
        again = eng.executor.submit(order("203.0.113.8", clock=clock)).result()
        assert (again.offences, again.expires_at) == (1, clock.now() + 60)
    finally:
        eng.close()


def test_protected_address_is_refused_and_nothing_runs(engine: Engine) -> None:
    result = engine.executor.submit(order("198.51.100.3")).result()
    assert result.outcome == "refused"
    assert "protected" in (result.error or "")
    assert not engine.hosts_deny.exists()
    assert engine.ledger.entries() == []
    assert not (engine.config.global_.log_dir / "active-responses.log").read_text()


def test_global_cap_and_rate_limit(tmp_path: Path, clock: FakeClock) -> None:
    eng = Engine(tmp_path, engine_config(tmp_path, max_active_responses=2), clock)
    try:
        ex = eng.executor
        outcomes = [ex.submit(order(f"203.0.113.{i}", clock=clock)).result() for i in (1, 2, 3)]
        assert [o.outcome for o in outcomes] == ["ok", "ok", "refused"]
        assert "global cap" in (outcomes[2].error or "")
        # A repeat of an address already in place is a refresh, not a new response: allowed.
        assert ex.submit(order("203.0.113.1", clock=clock)).result().outcome == "refreshed"
    finally:
        eng.close()
    eng = Engine(tmp_path / "b", engine_config(tmp_path / "b"), clock)
    try:
        results = [
            eng.executor.submit(order(f"203.0.113.{i}", command="limited-deny", clock=clock))
            .result().outcome
            for i in (1, 2, 3)
        ]
        assert results == ["ok", "ok", "refused"]
    finally:
        eng.close()


def test_unknown_command_and_missing_srcip_are_refused(engine: Engine) -> None:
    from dfir_ar.ids import new_id
    from dfir_ar.order import Order
    from dfir_ar.responder import Target

    bad = engine.executor.submit(order("203.0.113.9", command="firewal-drop")).result()
    assert bad.outcome == "refused" and "no [[command]]" in (bad.error or "")
    none = engine.executor.submit(Order(id=new_id(), command="host-deny", target=Target())).result()
    assert none.outcome == "refused" and "srcip" in (none.error or "")


class SleepyResponder(Responder):
    """Runs a child that outlives any sane deadline, with a grandchild in its process group."""

    name: ClassVar[str] = "sleepy"
    expects: ClassVar[tuple[Arg, ...]] = (Arg.SRCIP,)
    marker: ClassVar[str] = f"31.{os.getpid()}"  # this run's own: another run's do not count

    def key(self, request: Request) -> str:
        return str(request.target.srcip)

    def add(self, request: Request) -> State:
        procs.run(["sh", "-c", f"sleep {self.marker} & exec sleep {self.marker}"], timeout=300)
        return {}

    def delete(self, request: Request, state: State) -> None:
        pass


class BrokenResponder(SleepyResponder):
    name: ClassVar[str] = "broken"

    def add(self, request: Request) -> State:
        raise ExecutionError("backend said no")


def _config_with(tmp_path: Path, executable: str, **cmd: object) -> Config:
    cfg = engine_config(tmp_path)
    raw = cfg.model_dump(by_alias=True, mode="json")
    raw["command"].append({"name": executable, "executable": executable, "expect": ["srcip"],
                           "timeout_allowed": True, **cmd})
    return Config.model_validate(raw)


def test_deadline_kills_the_whole_process_group(tmp_path: Path, clock: FakeClock) -> None:
    eng = Engine(tmp_path, _config_with(tmp_path, "sleepy", deadline=0.5), clock)
    try:
        eng.executor.register_responder("sleepy", SleepyResponder)
        start = time.monotonic()
        result = eng.executor.submit(order("203.0.113.20", command="sleepy")).result()
        assert time.monotonic() - start < 5
        assert result.outcome == "timeout"
        assert eng.ledger.entries() == []  # the intent is rolled back
        # The group got SIGKILL; the grandchild may take a moment to be reaped.
        deadline = time.monotonic() + 5
        while True:
            leftovers = [p for p in psutil.process_iter(["cmdline", "status"])
                         if p.info["status"] != psutil.STATUS_ZOMBIE
                         and f"sleep {SleepyResponder.marker}" in " ".join(p.info["cmdline"] or [])]
            if not leftovers or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert leftovers == []
    finally:
        eng.close()


def test_failed_add_rolls_back_the_intent(tmp_path: Path, clock: FakeClock) -> None:
    eng = Engine(tmp_path, _config_with(tmp_path, "broken"), clock)
    try:
        eng.executor.register_responder("broken", BrokenResponder)
        result = eng.executor.submit(order("203.0.113.21", command="broken")).result()
        assert (result.outcome, result.error) == ("failed", "backend said no")
        assert eng.ledger.entries() == []
        assert eng.executor.active_count() == 0
        log = (eng.config.global_.log_dir / "active-responses.log").read_text()
        assert log.rstrip().endswith("active-response/bin/broken: Aborted")
    finally:
        eng.close()


def test_cursor_is_stored_with_the_intents(engine: Engine, clock: FakeClock) -> None:
    cursor = Cursor(source="file:/x", position="v1:1:1:42")
    engine.executor.accept([order("203.0.113.30", clock=clock)], cursor=cursor, wait=True)
    assert engine.ledger.load("file:/x") == cursor
    # An alert that produced no order still moves the cursor (it is consumed).
    engine.executor.accept([], cursor=Cursor(source="file:/x", position="v1:1:1:99"))
    engine.executor.flush()
    assert engine.ledger.load("file:/x") == Cursor(source="file:/x", position="v1:1:1:99")


def test_reconcile_after_crash(engine: Engine, clock: FakeClock) -> None:
    ex = engine.executor
    ex.submit(order("203.0.113.40", timeout=30, clock=clock)).result()  # will be expired
    ex.submit(order("203.0.113.41", timeout=600, clock=clock)).result()  # live, line lost
    ex.submit(order("203.0.113.42", timeout=None, clock=clock)).result()  # permanent
    # A crash between the intent and the action: the row exists, the line does not.
    intent = order("203.0.113.43", timeout=600, clock=clock)
    from dfir_ar.responder import Request

    with engine.ledger.transaction() as tx:
        tx.insert_intent(command="host-deny", key="203.0.113.43", order_id=intent.id,
                         agent_id="000", request=Request("host-deny", intent.target,
                                                         order_id=intent.id, timeout=600),
                         now=clock.now(), expires_at=clock.now() + 600, offences=1)
    engine.hosts_deny.write_text("# admin line\nALL: 203.0.113.40\nALL: 203.0.113.42\n")
    clock.advance(100)
    engine.restart()
    summary = engine.executor.reconcile()
    assert summary == {"expired": 1, "live": 2, "readded": 1, "retried_intents": 1}
    engine.executor.expire_due(wait=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entry = engine.ledger.get("host-deny", "203.0.113.43")
        if entry is not None and entry.status == APPLIED:
            break
        time.sleep(0.01)
    lines = engine.deny_lines()
    # The admin's line and the permanent block untouched; the expired line gone; the lost line
    # and the never-applied intent (re)added (the intent retry runs in parallel: any order).
    assert lines[:2] == ["# admin line", "ALL: 203.0.113.42"]
    assert sorted(lines[2:]) == ["ALL: 203.0.113.41", "ALL: 203.0.113.43"]
    states = {e.key: e.status for e in engine.ledger.entries()}
    assert states == {"203.0.113.41": APPLIED, "203.0.113.42": APPLIED, "203.0.113.43": APPLIED}
    assert engine.executor.pending() == 2  # .41 and .43 rescheduled; .42 has no timeout


def test_graceful_stop_keeps_blocks_unless_lift_on_stop(tmp_path: Path, clock: FakeClock) -> None:
    eng = Engine(tmp_path, engine_config(tmp_path), clock)
    eng.executor.submit(order("203.0.113.50", clock=clock)).result()
    eng.close()
    assert eng.deny_lines() == ["ALL: 203.0.113.50"]
    eng = Engine(tmp_path, engine_config(tmp_path, lift_on_stop=True), clock)
    eng.executor.reconcile()
    eng.executor.shutdown()  # the configured default: lift_on_stop = true
    eng.ledger.close()
    assert eng.deny_lines() == []
    assert Ledger.open(eng.config.global_.state_dir).entries() == []


def test_release_by_key_and_by_order_id(engine: Engine, clock: FakeClock) -> None:
    ex = engine.executor
    ex.submit(order("203.0.113.60", clock=clock)).result()
    second = ex.submit(order("203.0.113.61", clock=clock)).result()
    [r1] = ex.release("203.0.113.60")
    [r2] = ex.release(second.order_id)
    assert (r1.outcome, r2.outcome) == ("ok", "ok")
    assert engine.deny_lines() == []
    assert ex.release("203.0.113.99") == []
    assert ex.pending() == 0


def test_invalid_ledger_row_is_never_acted_on(engine: Engine, clock: FakeClock) -> None:
    engine.executor.submit(order("203.0.113.70", clock=clock)).result()
    engine.ledger._conn.execute(
        "UPDATE entries SET request = json_set(request, '$.target.srcip', '203.0.113.70; id')"
    )
    engine.restart()
    assert engine.executor.reconcile() == {"invalid": 1}
    clock.advance(3600)
    assert engine.executor.expire_due() == []
    assert engine.deny_lines() == ["ALL: 203.0.113.70"]


def test_timeout_loop_wakes_on_the_deadline_not_a_tick(tmp_path: Path) -> None:
    cfg = engine_config(tmp_path)
    ledger = Ledger.open(cfg.global_.state_dir)
    ex = Executor(cfg, ledger, clock=SystemClock(), protected=[parse_network("127.0.0.0/8")])
    stop = threading.Event()
    loop = threading.Thread(target=ex.run_timeouts, args=(stop,), daemon=True)
    loop.start()
    try:
        # The loop is asleep with nothing pending (up to its 5 s ceiling); a new, earlier
        # deadline must wake it.
        time.sleep(0.05)
        result = ex.submit(order("203.0.113.80", timeout=0.3)).result()
        assert result.expires_at is not None
        while ledger.entries() and time.time() < result.expires_at + 3:
            time.sleep(0.01)
        assert ledger.entries() == []
        [rec] = [r for r in read_audit(cfg.global_.log_dir / "audit.jsonl")
                 if r["action"] == "delete"]
        assert isinstance(rec["details"], dict) and rec["details"]["late"] < 1.0
    finally:
        stop.set()
        ex.wake()
        loop.join(5)
        ex.shutdown(lift=False)
        ledger.close()


def test_intent_rows_are_never_left_behind_by_refusals(engine: Engine) -> None:
    engine.executor.submit(order("198.51.100.1")).result()
    assert all(e.status != INTENT for e in engine.ledger.entries())
    assert engine.ledger.entries() == []


@pytest.mark.parametrize("bad", ["203.0.113.7\nALL: ALL", "ALL"])
def test_manual_orders_are_validated(engine: Engine, bad: str) -> None:
    from dfir_ar.control import manual_order
    from dfir_ar.errors import UsageError

    with pytest.raises(UsageError):
        manual_order(engine.config, "host-deny", srcip=bad, user=None, timeout=None,
                     operator="root")


WAZUH_SCRIPT = '''#!{python}
"""A stateful Wazuh >= 4.2 active-response script: check_keys handshake, then record."""
import json, sys
msg = json.loads(sys.stdin.readline())
ip = msg["parameters"]["alert"]["data"]["srcip"]
out = {log!r}
if msg["command"] == "add":
    print(json.dumps({{"version": 1, "origin": {{"name": "rec", "module": "active-response"}},
                      "command": "check_keys", "parameters": {{"keys": [ip]}}}}), flush=True)
    answer = json.loads(sys.stdin.readline())
    if answer["command"] != "continue":
        sys.exit(0)
with open(out, "a") as fh:
    fh.write(msg["command"] + " " + ip + "\\n")
'''


def test_external_wazuh_script_through_the_executor(tmp_path: Path, clock: FakeClock) -> None:
    import os
    import sys

    bindir = tmp_path / "ar-bin"
    bindir.mkdir()
    record = tmp_path / "record.log"
    script = bindir / "rec-script"
    script.write_text(WAZUH_SCRIPT.format(python=sys.executable, log=str(record)))
    os.chmod(script, 0o750)
    eng = Engine(tmp_path, _config_with(tmp_path, "rec-script"), clock)
    try:
        first = eng.executor.submit(order("203.0.113.90", command="rec-script")).result(30)
        assert first.outcome == "ok", first.error
        again = eng.executor.submit(order("203.0.113.90", command="rec-script")).result(30)
        assert again.outcome == "refreshed"  # dedup by (command, key): the script is not rerun
        clock.advance(3600)
        [done] = [t.result(30) for t in eng.executor.expire_due()]
        assert done.outcome == "ok", done.error
        assert record.read_text().splitlines() == ["add 203.0.113.90", "delete 203.0.113.90"]
    finally:
        eng.close()


def test_repeat_during_the_undo_puts_the_block_back(tmp_path: Path, clock: FakeClock) -> None:
    from responders.host_deny import HostDeny

    hook: list[Executor] = []

    class RacingHostDeny(HostDeny):
        """host-deny whose undo is overtaken by a repeat offence that commits meanwhile."""

        name: ClassVar[str] = "racing-deny"

        def delete(self, request: Request, state: State) -> None:
            super().delete(request, state)
            if hook:
                ex = hook.pop()
                ex.accept([order("203.0.113.95", command="racing-deny", clock=clock)])
                ex.flush()

    raw = _config_with(tmp_path, "racing-deny").model_dump(by_alias=True, mode="json")
    raw["responders"]["racing-deny"] = {"path": str(tmp_path / "hosts.deny")}
    eng = Engine(tmp_path, Config.model_validate(raw), clock)
    try:
        eng.executor.register_responder("racing-deny", RacingHostDeny)
        eng.executor.submit(order("203.0.113.95", command="racing-deny", clock=clock)).result()
        clock.advance(61)
        hook.append(eng.executor)
        [undo] = [t.result(10) for t in eng.executor.expire_due()]
        assert undo.details.get("reapplied") is True
        assert eng.deny_lines() == ["ALL: 203.0.113.95"]
        [entry] = eng.ledger.entries()
        assert entry.offences == 2 and entry.expires_at == clock.now() + 300
        assert eng.executor.next_deadline() == clock.now() + 300
    finally:
        eng.close()


def test_slow_adds_do_not_make_an_undo_late(tmp_path: Path, clock: FakeClock) -> None:
    raw = _config_with(tmp_path, "sleepy", deadline=2.0).model_dump(by_alias=True, mode="json")
    raw["global"]["workers"] = 2
    eng = Engine(tmp_path, Config.model_validate(raw), clock)
    try:
        eng.executor.register_responder("sleepy", SleepyResponder)
        eng.executor.submit(order("203.0.113.60", clock=clock)).result()
        slow = [eng.executor.submit(order(f"203.0.113.{i}", command="sleepy")) for i in (61, 62)]
        time.sleep(0.2)  # both workers are now stuck in their 2 s deadline
        clock.advance(61)
        start = time.monotonic()
        [undo] = [t.result(5) for t in eng.executor.expire_due()]
        assert undo.outcome == "ok" and time.monotonic() - start < 1.0
        assert eng.deny_lines() == []
        assert [t.result(10).outcome for t in slow] == ["timeout", "timeout"]
    finally:
        eng.close()


class TableResponder(Responder):
    """In-process and fast (so its expiries go in chunks): a set of keys, one that fails."""

    name: ClassVar[str] = "table"
    expects: ClassVar[tuple[Arg, ...]] = (Arg.SRCIP,)
    present: ClassVar[set[str]] = set()
    refuse_delete: ClassVar[str] = ""

    def key(self, request: Request) -> str:
        return str(request.target.srcip)

    def add(self, request: Request) -> State:
        TableResponder.present.add(str(request.target.srcip))
        return {}

    def delete(self, request: Request, state: State) -> None:
        key = str(request.target.srcip)
        if key == TableResponder.refuse_delete:
            raise ExecutionError("backend said no")
        TableResponder.present.discard(key)


def _burst(count: int) -> list[str]:
    return [f"203.0.113.{i}" for i in range(16, 16 + min(count, 200))] + [
        f"2001:db8::{i:x}" for i in range(1, max(0, count - 200) + 1)
    ]


def _table_engine(tmp_path: Path, clock: FakeClock, keys: list[str],
                  responder: type[TableResponder] = TableResponder,
                  also: type[TableResponder] | None = None) -> Engine:
    """An engine whose ``responder`` holds every key (added through the executor); ``also``:
    a second command, registered too."""
    TableResponder.present = set()
    TableResponder.refuse_delete = ""
    raw = _config_with(tmp_path, responder.name).model_dump(by_alias=True, mode="json")
    if also is not None:
        raw["command"].append({"name": also.name, "executable": also.name,
                               "expect": ["srcip"], "timeout_allowed": True})
    eng = Engine(tmp_path, Config.model_validate(raw), clock)
    if also is not None:
        eng.executor.register_responder(also.name, also)
    eng.executor.register_responder(responder.name, responder)
    tickets = eng.executor.accept([order(k, command=responder.name, clock=clock) for k in keys])
    assert {t.result(10).outcome for t in tickets} == {"ok"}
    assert TableResponder.present == set(keys)
    return eng


def test_a_burst_of_expiries_is_undone_in_chunks(tmp_path: Path, clock: FakeClock) -> None:
    keys = _burst(600)  # more than two chunks of FAST_CHUNK
    eng = _table_engine(tmp_path, clock, keys)
    TableResponder.refuse_delete = "203.0.113.17"
    try:
        ex = eng.executor
        # The adds' speed stands in until a delete is timed. Measured (typically 1.0: all of
        # them fast), but set here so that a stall on a loaded host cannot pick another path.
        ex._add_fast["table"] = 1.0
        assert ex._delete_in_chunks("table")
        clock.advance(61)
        undone = [t.result(20) for t in ex.expire_due()]
        # One delete failed: only that one is kept and retried; the rest are retired.
        assert [r.key for r in undone if r.outcome == "failed"] == ["203.0.113.17"]
        assert len([r for r in undone if r.outcome == "ok"]) == len(keys) - 1
        assert TableResponder.present == {"203.0.113.17"}
        assert [e.key for e in eng.ledger.entries()] == ["203.0.113.17"]
        assert ex.next_deadline() == clock.now() + 5  # DELETE_RETRY[0]
        records = [r for r in audit(eng) if r["action"] == "delete"]
        assert len(records) == len(keys)
        assert {r["details"]["reason"] for r in records} == {"timeout"}  # type: ignore[index]
        lines = (eng.config.global_.log_dir / "active-responses.log").read_text().splitlines()
        assert sum(1 for ln in lines if ln.endswith(": Ended")) == 2 * len(keys) - 1

        TableResponder.refuse_delete = ""
        clock.advance(5)
        [retry] = [t.result(10) for t in ex.expire_due()]
        assert (retry.key, retry.outcome) == ("203.0.113.17", "ok")
        assert TableResponder.present == set() and eng.ledger.entries() == []
    finally:
        eng.close()


def test_a_repeat_that_lands_during_a_chunk_keeps_its_block(tmp_path: Path,
                                                             clock: FakeClock) -> None:
    hook: list[Executor] = []

    class RacingTable(TableResponder):
        name: ClassVar[str] = "racing-table"

        def delete(self, request: Request, state: State) -> None:
            super().delete(request, state)
            if hook and str(request.target.srcip) == "203.0.113.40":
                ex = hook.pop()
                ex.accept([order("203.0.113.40", command="racing-table", clock=clock)])
                ex.flush()

    eng = _table_engine(tmp_path, clock, [f"203.0.113.{i}" for i in range(30, 50)], RacingTable)
    try:
        ex = eng.executor
        clock.advance(61)
        hook.append(ex)
        undone = {r.key: r for r in (t.result(10) for t in ex.expire_due())}
        assert undone["203.0.113.40"].details.get("reapplied") is True
        assert TableResponder.present == {"203.0.113.40"}
        [entry] = eng.ledger.entries()
        assert (entry.key, entry.offences) == ("203.0.113.40", 2)
    finally:
        eng.close()


def test_release_and_lift_on_stop_go_through_the_same_chunks(tmp_path: Path,
                                                             clock: FakeClock) -> None:
    keys = _burst(300)
    eng = _table_engine(tmp_path, clock, keys)
    try:
        ex = eng.executor
        [released] = ex.release("203.0.113.20")
        assert (released.outcome, released.details["reason"]) == ("ok", "release")
        ex.shutdown(lift=True)
        assert TableResponder.present == set() and eng.ledger.entries() == []
        reasons = [r["details"]["reason"] for r in audit(eng)  # type: ignore[index]
                   if r["action"] == "delete"]
        assert reasons.count("stop") == len(keys) - 1 and reasons.count("release") == 1
    finally:
        eng.ledger.close()


def test_a_hung_fast_command_holds_up_only_its_own_lane(tmp_path: Path, clock: FakeClock) -> None:
    gate = threading.Event()

    class Stalling(TableResponder):
        name: ClassVar[str] = "stalling"
        stall: ClassVar[bool] = False

        def add(self, request: Request) -> State:
            if Stalling.stall:
                gate.wait(30)
            return super().add(request)

    eng = _table_engine(tmp_path, clock, ["203.0.113.70"], also=Stalling)
    try:
        ex = eng.executor
        assert ex.submit(order("203.0.113.71", command="stalling", clock=clock)).result(10).outcome \
            == "ok"
        # Both commands count as fast (measured so; set so that a stall cannot change it).
        ex._add_fast["table"] = ex._add_fast["stalling"] = 1.0
        Stalling.stall = True
        stuck = ex.submit(order("203.0.113.72", command="stalling", clock=clock))
        time.sleep(0.2)  # the stalling lane is now blocked
        start = time.monotonic()
        other = ex.submit(order("203.0.113.73", command="table", clock=clock)).result(10)
        assert other.outcome == "ok" and time.monotonic() - start < 2
        assert not stuck.done()
        gate.set()
        assert stuck.result(10).outcome == "ok"
    finally:
        gate.set()
        Stalling.stall = False
        eng.close()


def test_the_logged_alert_is_the_one_acted_on_when_a_key_occurs_twice(
    tmp_path: Path, clock: FakeClock,
) -> None:
    # The engine (like every last-wins JSON reader) acts on the last srcip; a first-wins reader
    # of active-responses.log (Wazuh's cJSON) must not be shown another address.
    from dfir_ar.parsers import parse_wazuh_line
    from dfir_ar.pipeline import Pipeline

    line = (b'{"timestamp":"2026-11-22T08:00:10.000+0000","rule":{"level":10,"id":"5712",'
            b'"groups":["sshd"]},"agent":{"id":"000","name":"a"},"id":"1.1",'
            b'"data":{"srcip":"198.51.100.99","srcip":"203.0.113.66"}}')
    eng = Engine(tmp_path, engine_config(tmp_path), clock)
    try:
        alert = parse_wazuh_line(line)
        [decision] = Pipeline(eng.config, []).decide(alert, clock.now())
        assert decision.order is not None
        assert eng.executor.submit(decision.order).result(10).outcome == "ok"
        assert eng.deny_lines() == ["ALL: 203.0.113.66"]
        log_text = (eng.config.global_.log_dir / "active-responses.log").read_text()
        assert "203.0.113.66" in log_text and "198.51.100.99" not in log_text
    finally:
        eng.close()


def test_one_stall_does_not_make_a_fast_command_slow() -> None:
    from dfir_ar.executor import _mostly_fast, _note_speed

    shares: dict[str, float] = {}
    assert not _mostly_fast(shares.get("table"))  # never timed: treated as a script
    for _ in range(50):
        _note_speed(shares, "table", 0.00001)
    _note_speed(shares, "table", 0.005)  # a GIL switch landed in one add
    assert _mostly_fast(shares["table"])
    for _ in range(6):
        _note_speed(shares, "table", 0.005)  # seven in a row: now it is mostly slow
    assert not _mostly_fast(shares["table"])
    for _ in range(50):
        _note_speed(shares, "script", 0.002)
    _note_speed(shares, "script", 0.00001)
    assert not _mostly_fast(shares["script"])
