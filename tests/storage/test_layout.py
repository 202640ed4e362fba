"""Pure parts of storage: URLs, the key layout, part sizing, checksums, back-off, resume log."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dfir_ar.errors import ConfigError, InvalidArgument, StoreError
from dfir_ar.evidence.spool import ManifestFacts, backoff_delay, parse_time
from dfir_ar.evidence.stores.base import bundle_key, manifest_key, parse_store_url
from dfir_ar.evidence.stores.s3 import (
    MAX_PARTS,
    ResumeLog,
    _ResumeHeader,
    choose_part_size,
    composite_checksum,
)
from dfir_ar.ids import new_id

MiB = 1024 * 1024


def test_store_urls() -> None:
    loc = parse_store_url("s3://dfir-evidence/bundles/prod/")
    assert (loc.scheme, loc.bucket, loc.prefix) == ("s3", "dfir-evidence", "bundles/prod")
    assert parse_store_url("s3://dfir-evidence").prefix == ""
    assert parse_store_url("file:///var/lib/dfir-ar/evidence").bucket == "/var/lib/dfir-ar/evidence"
    for bad, words in [
        ("file://var/lib/x", "three slashes"),
        ("s3://Bad_Bucket/x", "bucket name"),
        ("s3://bucket/a/../b", ".."),
        ("ftp://host/x", "file:///DIR or s3://"),
    ]:
        with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("/", "/")):
            parse_store_url(bad)


def test_layout_uses_utc_day_of_creation() -> None:
    bid = new_id()
    # 23:30 at UTC-5 is 04:30 the next day in UTC: the layout follows UTC.
    created = datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert bundle_key("bundles", "001", created, bid) == f"bundles/001/2026/03/02/{bid}.tar.zst"
    assert manifest_key("", "001", created, bid) == f"001/2026/03/02/{bid}.manifest.json"


@pytest.mark.parametrize("agent", ["../x", "a/b", "", ".hidden", "x" * 65])
def test_hostile_agent_id_cannot_escape_its_prefix(agent: str) -> None:
    with pytest.raises(InvalidArgument):
        bundle_key("bundles", agent, datetime.now(UTC), new_id())


def test_part_size_keeps_every_object_within_10000_parts() -> None:
    assert choose_part_size(1024 * MiB, 64 * MiB, workers=8) == 64 * MiB
    assert choose_part_size(256 * MiB, 64 * MiB, workers=8) == 16 * MiB  # 16 parts for 8 workers
    assert choose_part_size(20 * MiB, 64 * MiB, workers=8) == 8 * MiB  # not below 8 MiB
    assert choose_part_size(100 * MiB, 1) == 5 * MiB  # S3's minimum
    for size in (5 * 1024**3 + 1, 700 * 1024**3, 5 * 1024**4):
        part = choose_part_size(size, 64 * MiB, workers=8)
        assert part % MiB == 0
        assert -(-size // part) <= MAX_PARTS
    with pytest.raises(StoreError, match="object limit"):
        choose_part_size(6 * 1024**4, 64 * MiB)


def test_composite_checksum_is_the_s3_formula() -> None:
    parts = [b"a" * 10, b"b" * 7]
    digests = [hashlib.sha256(p).digest() for p in parts]
    expected = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode() + "-2"
    assert composite_checksum(digests) == expected


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    samples = {a: [backoff_delay(a, base=1.0, cap=60.0, rng=rng) for _ in range(300)] for a in (1, 3, 10)}
    assert max(samples[1]) <= 1.0
    assert max(samples[3]) <= 4.0 and max(samples[3]) > 2.0
    assert max(samples[10]) <= 60.0 and max(samples[10]) > 30.0
    assert len({round(s, 6) for s in samples[10]}) > 250  # jitter: agents do not retry in step
    assert backoff_delay(10_000, base=1.0, cap=5.0, rng=rng) <= 5.0


def test_resume_log_ignores_a_torn_last_line(tmp_path: Path) -> None:
    log = ResumeLog(tmp_path / "x.upload.jsonl")
    log.start(_ResumeHeader("k", "upload-1", 100, "ab" * 32, 5 * MiB))
    log.add_part(1, '"e1"', "c1")
    log.add_part(2, '"e2"', "c2")
    with log.path.open("a") as fh:
        fh.write('{"t": "part", "n": 3, "et')  # what a kill -9 mid-write leaves
    header, parts = log.load()
    assert header is not None and header.upload_id == "upload-1"
    assert parts == {1: ('"e1"', "c1"), 2: ('"e2"', "c2")}


def test_manifest_facts_and_refusals() -> None:
    bid = new_id()
    raw = {"bundle_id": bid, "created": "2026-11-22T08:00:00Z", "agent": {"id": "007"},
           "trigger": {"rule_id": 5712, "alert_id": "1.2"}}
    facts = ManifestFacts.from_json(json.dumps(raw).encode())
    assert (facts.agent_id, facts.rule_id, facts.alert_id) == ("007", "5712", "1.2")
    assert facts.created == datetime(2026, 11, 22, 8, tzinfo=UTC)
    with pytest.raises(StoreError, match="JSON"):
        ManifestFacts.from_json(b"{not json")
    with pytest.raises(StoreError, match=r"agent\.id"):
        ManifestFacts.from_json(json.dumps({"bundle_id": bid}).encode())
    with pytest.raises(InvalidArgument):
        ManifestFacts.from_json(json.dumps({**raw, "agent": {"id": "../../etc"}}).encode())
    assert parse_time(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_time("garbage") is None


def test_resume_log_that_cannot_be_written_does_not_stop_the_upload(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    log = ResumeLog(not_a_dir / "x.upload.jsonl")  # ENOTDIR on every write
    log.start(_ResumeHeader("k", "u", 1, "ab" * 32, 5 * MiB))
    log.add_part(1, '"e"', "c")
    assert log.load() == (None, {})
