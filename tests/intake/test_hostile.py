"""The hostile corpus (examples/alerts/make_hostile.py): nothing in it may produce an order, and
every record must be refused with a reason, through the same reader and pipeline serve uses."""

from __future__ import annotations

import http.client as http_client
from collections.abc import Callable
from pathlib import Path

from dfir_ar.alert import Alert
from dfir_ar.pipeline import Pipeline
from dfir_ar.rails import host_protected_networks
from dfir_ar.sources import file_source_name
from dfir_ar.sources.base import Rejected
from dfir_ar.sources.http import HttpSource
from dfir_ar.sources.reader import RecordReader
from dfir_ar.sources.tail import FileTail

from .conftest import EXAMPLES, JsonCursorStore, Recorder, Running, make_config


def run_corpus(name: str) -> tuple[int, list[str]]:
    pipeline = Pipeline(make_config(), host_protected_networks())
    reader = RecordReader("auto")
    data = (EXAMPLES / name).read_bytes()
    items = [*reader.feed(data), *reader.finish()]
    reasons: list[str] = []
    for item, _end in items:
        if isinstance(item, Rejected):
            assert item.reason and item.excerpt.isascii() and item.excerpt.isprintable()
            reasons.append(item.reason)
            continue
        assert isinstance(item, Alert)
        decisions = pipeline.decide(item, 1_795_334_410.0)
        assert decisions, f"hostile alert matched nothing, so it tests nothing: {item!r:.300}"
        for d in decisions:
            assert d.order is None, f"ORDER from hostile input: {d.order!r:.500}"
            assert d.refused, d
            reasons.append(d.refused)
    return len(items), reasons


def test_hostile_jsonl_runs_nothing() -> None:
    count, reasons = run_corpus("hostile.jsonl")
    lines = (EXAMPLES / "hostile.jsonl").read_bytes().count(b"\n")
    assert count == lines >= 200  # one refusal or refused decision set per record, none lost
    assert len(reasons) >= count


def test_hostile_ossec_blocks_run_nothing() -> None:
    count, _ = run_corpus("hostile-ossec.log")
    assert count == 13


def test_a_good_alert_through_the_same_path_does_fire() -> None:
    """The control: the corpus config does fire for a clean alert (so 'nothing fired' means
    the input was refused, not that the config was inert)."""
    pipeline = Pipeline(make_config(), host_protected_networks())
    reader = RecordReader("auto")
    line = (EXAMPLES / "plain.jsonl").read_bytes().splitlines()[1]  # ::ffff:198.51.100.7
    (item, _), = reader.feed(line + b"\n")
    assert isinstance(item, Alert)
    block = pipeline.decide(item, 1_795_334_410.0)[0]
    assert block.order is not None and str(block.order.target.srcip) == "198.51.100.7"


def test_hostile_corpus_through_a_real_file_tail_and_http(
    tmp_path: Path, run_source: Callable[..., Running]
) -> None:
    """The same records through the real sources: each one comes out (alert or refusal), the
    source survives all of them, and the cursor ends exactly at the end of the file."""
    data = (EXAMPLES / "hostile.jsonl").read_bytes()
    lines = data.count(b"\n")
    path = tmp_path / "alerts.json"
    path.write_bytes(data)
    store = JsonCursorStore(tmp_path / "cursors.json")
    rec = Recorder(store)
    source = FileTail(file_source_name(path), path, store, start_at="beginning")
    run_source(source, rec)
    rec.wait_for(lines)
    cursor = store.load(source.name)
    assert cursor is not None and cursor.position.endswith(f":{len(data)}")
    pipeline = Pipeline(make_config(), host_protected_networks())
    assert not [o for a in rec.alerts for d in pipeline.decide(a, 0.0) if (o := d.order)]

    http = HttpSource("http:hostile", "127.0.0.1:0", "t" * 32)
    got = Recorder()
    run_source(http, got)
    assert http.address is not None
    for line in data.split(b"\n")[:-1]:
        conn = http_client.HTTPConnection(*http.address, timeout=10)
        conn.request("POST", "/alerts", body=line, headers={"Authorization": "Bearer " + "t" * 32})
        status = conn.getresponse().status
        conn.close()
        assert status in (202, 400, 413), status
    assert len(got.alerts) == len(rec.alerts)
