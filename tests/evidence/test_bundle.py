"""BundleWriter and verify_bundle: hashing while writing, cap, disk floor, sealing, tampering."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from dfir_ar.collector import ByteCapReached, Outcome, Status
from dfir_ar.errors import EvidenceError, InvalidArgument
from dfir_ar.evidence.bundle import DiskFloorReached, recover_spool, validate_relpath
from dfir_ar.evidence.manifest import MEDIA_JSONL, MEDIA_OCTETS, Manifest
from dfir_ar.evidence.verify import verify_bundle
from tests.evidence.helpers import make_writer, read_members, repack, seal

LINES = [json.dumps({"pid": i, "name": f"proc{i}"}).encode() + b"\n" for i in range(300)]
BLOB = bytes(range(256)) * 64


def _small_bundle(spool: Path) -> Path:
    w = make_writer(spool, "processes")
    with w.artifact("processes.jsonl", MEDIA_JSONL) as f:
        for line in LINES:
            f.write(line)
    with w.artifact("raw/blob.bin", MEDIA_OCTETS) as f:
        f.write(BLOB)
    result, report = seal(w, Outcome(Status.OK, details={"count": 300}))
    assert report.ok, report.problems
    return result.path


def test_roundtrip_hashes_match_content_and_layout(spool_dir: Path) -> None:
    w = make_writer(spool_dir, "processes", arguments={"depth": 2})
    staging = w.staging_dir
    assert staging == spool_dir / "staging" / w.bundle_id
    with w.artifact("processes.jsonl", MEDIA_JSONL) as f:
        for line in LINES:
            f.write(line)
        assert f.size == sum(map(len, LINES))
    result, report = seal(w, Outcome(Status.OK, details={"count": 300}))
    assert report.ok, report.problems
    assert report.artifacts_checked == 1
    assert result.path == spool_dir / "ready" / f"{w.bundle_id}.tar.zst"
    assert result.manifest_path == spool_dir / "ready" / f"{w.bundle_id}.manifest.json"
    assert result.status is Status.OK
    assert not staging.exists()
    members = read_members(result.path)
    assert next(iter(members)) == "manifest.json"
    assert members["manifest.json"] == result.manifest_path.read_bytes()
    content = members["artifacts/processes/processes.jsonl"]
    assert content == b"".join(LINES)
    manifest = Manifest.from_bytes(members["manifest.json"])
    (entry,) = manifest.artifacts
    assert entry.sha256 == hashlib.sha256(content).hexdigest()
    assert entry.size == len(content)
    assert entry.media_type == MEDIA_JSONL
    (rec,) = manifest.collectors
    assert rec.name == "processes" and rec.status is Status.OK
    assert rec.arguments == {"depth": 2} and rec.details == {"count": 300}
    assert manifest.trigger.srcip == "203.0.113.7"
    assert manifest.agent.id == "001"
    assert manifest.tools["dfir-ar"]
    # Canonical: sorted keys, compact, UTF-8.
    raw = members["manifest.json"]
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False).encode()
    assert not list((spool_dir / "ready").glob(".*"))


@pytest.mark.parametrize(
    "bad", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\x00b", "a\\b",
            "a\nb", "x" * 2000],
)
def test_artifact_paths_are_validated(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_relpath(bad)


def test_artifact_refuses_traversal_and_duplicates(spool_dir: Path) -> None:
    w = make_writer(spool_dir, "c")
    with pytest.raises(InvalidArgument), w.artifact("../../escape", MEDIA_OCTETS):
        pass
    with w.artifact("a.bin", MEDIA_OCTETS) as f:
        f.write(b"x")
    with pytest.raises(InvalidArgument), w.artifact("a.bin", MEDIA_OCTETS):
        pass
    _, report = seal(w, Outcome(Status.OK))
    assert report.ok


def test_byte_cap_is_all_or_nothing_and_marks_partial(spool_dir: Path) -> None:
    w = make_writer(spool_dir, "c", max_bytes=1000)
    written = 0
    with w.artifact("data.bin", MEDIA_OCTETS) as f:
        with pytest.raises(ByteCapReached):
            while True:
                f.write(b"r" * 300)
                written += 300
        assert f.size == 900  # the write that would cross the cap wrote nothing
    assert w.bytes_remaining == 100
    result, report = seal(w, Outcome(Status.OK))
    assert report.ok, report.problems
    m = report.manifest
    assert m is not None
    assert result.status is Status.PARTIAL
    assert m.collectors[0].status is Status.PARTIAL
    assert "byte cap" in m.collectors[0].reason
    assert m.artifacts[0].size == written == 900


def test_disk_floor_stops_with_a_reason(spool_dir: Path) -> None:
    w = make_writer(spool_dir, "pcap", min_free_bytes=1 << 60)
    with pytest.raises(DiskFloorReached), w.artifact("x.pcap", MEDIA_OCTETS):
        pass
    result, report = seal(w, Outcome(Status.OK))
    assert report.ok, report.problems
    assert result.status is Status.PARTIAL
    assert report.manifest is not None
    assert "min_free_mb" in report.manifest.collectors[0].reason


def test_failed_collector_keeps_the_error(spool_dir: Path) -> None:
    w = make_writer(spool_dir, "c")
    result, report = seal(w, Outcome(Status.FAILED, "no such interface eth9"))
    assert report.ok
    assert result.status is Status.FAILED
    assert report.manifest is not None
    assert report.manifest.collectors[0].error == "no such interface eth9"


def test_parallel_writers_are_all_recorded(spool_dir: Path) -> None:
    w = make_writer(spool_dir, "yara")

    def job(n: int) -> None:
        with w.artifact(f"part{n}.bin", MEDIA_OCTETS) as f:
            for _ in range(200):
                f.write(bytes([n]) * 100)

    threads = [threading.Thread(target=job, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, report = seal(w, Outcome(Status.OK))
    assert report.ok, report.problems
    assert report.artifacts_checked == 6


def test_open_artifact_is_cut_at_seal_and_later_writes_refused(spool_dir: Path) -> None:
    w = make_writer(spool_dir, "slow")
    cm = w.artifact("stream.bin", MEDIA_OCTETS)
    f = cm.__enter__()
    f.write(b"a" * 5000)
    w.end_collector(Outcome(Status.PARTIAL, "abandoned"))
    result = w.seal()
    with pytest.raises(ByteCapReached):
        f.write(b"more")
    cm.__exit__(None, None, None)
    report = verify_bundle(result.path)
    assert report.ok, report.problems
    assert report.manifest is not None and report.manifest.artifacts[0].size == 5000
    with pytest.raises(EvidenceError):
        w.seal()


def test_every_single_byte_flip_fails_verification(spool_dir: Path) -> None:
    path = _small_bundle(spool_dir)
    data = path.read_bytes()
    target = spool_dir / "tampered.tar.zst"
    undetected = []
    for offset in range(len(data)):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01 if offset % 2 else 0x80
        target.write_bytes(flipped)
        if verify_bundle(target).ok:
            undetected.append(offset)
    assert undetected == []


def test_truncated_and_extended_archives_fail(spool_dir: Path) -> None:
    path = _small_bundle(spool_dir)
    data = path.read_bytes()
    target = spool_dir / "x.tar.zst"
    for cut in (len(data) - 1, len(data) - 40, len(data) // 2, 10, 0):
        target.write_bytes(data[:cut])
        report = verify_bundle(target)
        assert not report.ok, cut
    target.write_bytes(data + b"\x00")
    report = verify_bundle(target)
    assert not report.ok
    assert any("after" in p for p in report.problems)


def test_consistent_forgery_is_named_per_artifact(spool_dir: Path) -> None:
    path = _small_bundle(spool_dir)
    members = read_members(path)
    forged = dict(members)
    forged["artifacts/processes/processes.jsonl"] = b"{}\n"
    del forged["artifacts/processes/raw/blob.bin"]
    forged["artifacts/processes/extra.txt"] = b"planted"
    report = verify_bundle(repack(path, forged, spool_dir / "forged.tar.zst"))
    assert not report.ok
    text = "\n".join(report.problems)
    assert "artifacts/processes/processes.jsonl: size 3" in text
    assert "artifacts/processes/processes.jsonl: SHA-256" in text
    assert "artifacts/processes/raw/blob.bin is listed in the manifest but missing" in text
    assert "extra member artifacts/processes/extra.txt" in text


def test_edited_manifest_is_caught_without_a_key_when_hashes_disagree(spool_dir: Path) -> None:
    path = _small_bundle(spool_dir)
    members = read_members(path)
    doc = json.loads(members["manifest.json"])
    doc["trigger"]["srcip"] = "203.0.113.99"  # an edit that keeps every artifact hash right
    members["manifest.json"] = json.dumps(doc, indent=1).encode()
    report = verify_bundle(repack(path, members, spool_dir / "edited.tar.zst"))
    assert not report.ok
    assert any("canonical" in p for p in report.problems)


def test_recover_seals_interrupted_collection_as_failed(spool_dir: Path) -> None:
    w = make_writer(spool_dir, "pcap")
    with w.artifact("done.pcap", MEDIA_OCTETS) as f:
        f.write(b"complete")
    cm = w.artifact("open.pcap", MEDIA_OCTETS)
    cm.__enter__().write(b"half")
    # Still held by a live writer: recovery leaves it alone.
    assert recover_spool(spool_dir) == []
    w._release_lock()  # what the process's death does to the flock
    (result,) = recover_spool(spool_dir)
    assert result.bundle_id == w.bundle_id
    assert result.status is Status.FAILED
    report = verify_bundle(result.path)
    assert report.ok, report.problems
    m = report.manifest
    assert m is not None
    assert [a.path for a in m.artifacts] == ["artifacts/pcap/done.pcap"]
    assert "crash or kill" in m.collectors[0].error
    assert m.collectors[0].details["dropped_incomplete_artifacts"] == ["artifacts/pcap/open.pcap"]
    assert not (spool_dir / "staging" / w.bundle_id).exists()
    assert recover_spool(spool_dir) == []


def test_recover_finishes_a_seal_interrupted_after_the_manifest(spool_dir: Path) -> None:
    from dfir_ar.evidence.bundle import MANIFEST_NAME, _atomic_write

    w = make_writer(spool_dir, "c")
    with w.artifact("a.txt", MEDIA_OCTETS) as f:
        f.write(b"evidence")
    w.end_collector(Outcome(Status.OK))
    manifest = w.build_manifest()
    _atomic_write(w.staging_dir / MANIFEST_NAME, manifest.canonical_bytes())
    (spool_dir / "ready" / f".{w.bundle_id}.tar.zst.tmp").write_bytes(b"half an archive")
    w._release_lock()
    (result,) = recover_spool(spool_dir)
    assert result.status is Status.OK
    report = verify_bundle(result.path)
    assert report.ok, report.problems
    assert report.manifest == manifest
    assert sorted(p.name for p in (spool_dir / "ready").iterdir()) == sorted(
        [f"{w.bundle_id}.tar.zst", f"{w.bundle_id}.tar.zst.sha256", f"{w.bundle_id}.manifest.json"]
    )


def test_decompression_bomb_is_refused_quickly(tmp_path: Path) -> None:
    import time

    from dfir_ar.evidence.bundle import new_compressor, trailer

    cobj = new_compressor().compressobj()
    parts = [cobj.compress(b"\0" * (1 << 24)) for _ in range(16)]
    frame = b"".join([*parts, cobj.flush()])
    path = tmp_path / "bomb.tar.zst"
    path.write_bytes(frame + trailer(hashlib.sha256(frame).digest()))
    t0 = time.monotonic()
    report = verify_bundle(path)
    assert time.monotonic() - t0 < 5
    assert not report.ok
    assert any("after the end of its tar" in p for p in report.problems)


def test_wrong_file_is_named(spool_dir: Path) -> None:
    path = _small_bundle(spool_dir)
    sidecar = path.with_name(path.name.replace(".tar.zst", ".manifest.json"))
    report = verify_bundle(sidecar)
    assert not report.ok
    assert any("not zstd's magic" in p for p in report.problems)


def test_failed_seal_keeps_staging_and_recovery_finishes_it(spool_dir: Path) -> None:
    w = make_writer(spool_dir, "c")
    with w.artifact("a.txt", MEDIA_OCTETS) as f:
        f.write(b"evidence")
    w.end_collector(Outcome(Status.OK))
    blocker = spool_dir / "ready" / f"{w.bundle_id}.tar.zst"
    blocker.mkdir()
    (blocker / "x").write_bytes(b"")  # a non-empty dir: the rename into place fails
    with pytest.raises(EvidenceError, match="sealed on the next start"):
        w.seal()
    assert (w.staging_dir / "manifest.json").is_file()
    assert not list((spool_dir / "ready").glob(".*.tmp"))
    (blocker / "x").unlink()
    blocker.rmdir()
    (result,) = recover_spool(spool_dir)
    assert result.status is Status.OK
    assert verify_bundle(result.path).ok


ENOSPC_SCRIPT = r"""
import json, subprocess, sys
from pathlib import Path
from dfir_ar.collector import ByteCapReached, Outcome, Status
from dfir_ar.evidence.verify import verify_bundle
from tests.evidence.helpers import make_writer
spool = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(spool)], check=True)
w = make_writer(spool, "memory")
chunks = 0
try:
    with w.artifact("dump.bin", "application/octet-stream") as f:
        while True:
            f.write(b"\0" * 65536)
            chunks += 1
except ByteCapReached as exc:
    reason = str(exc)
w.end_collector(Outcome(Status.OK))
result = w.seal()
report = verify_bundle(result.path)
print(json.dumps({"chunks": chunks, "reason": reason, "ok": report.ok,
                  "problems": report.problems, "status": result.status.value,
                  "size": report.manifest.artifacts[0].size,
                  "collector_reason": report.manifest.collectors[0].reason}))
"""


def test_real_enospc_stops_cleanly_and_the_bundle_verifies(tmp_path: Path) -> None:
    """A tmpfs of 600 KiB in a private mount namespace fills up mid-artifact."""
    import subprocess
    import sys

    from tests.conftest import require_root, require_tool

    require_root()
    require_tool("unshare", "mount")
    spool = tmp_path / "small"
    spool.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", ENOSPC_SCRIPT,
         str(spool)],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ok"], out["problems"]
    assert out["status"] == "partial"
    assert "disk full" in out["reason"] and "disk full" in out["collector_reason"]
    assert out["size"] == out["chunks"] * 65536 > 0  # all or nothing per write


def test_recovery_drops_artifacts_damaged_before_the_seal(spool_dir: Path) -> None:
    w = make_writer(spool_dir, "c")
    with w.artifact("good.bin", MEDIA_OCTETS) as f:
        f.write(b"good" * 100)
    with w.artifact("bad.bin", MEDIA_OCTETS) as f:
        f.write(b"bad!" * 100)
    w.end_collector(Outcome(Status.OK))
    (w.staging_dir / "artifacts/c/bad.bin").write_bytes(b"\0" * 400)  # what a power cut leaves
    w._release_lock()
    (result,) = recover_spool(spool_dir)
    report = verify_bundle(result.path)
    assert report.ok, report.problems
    assert report.manifest is not None
    assert [a.path for a in report.manifest.artifacts] == ["artifacts/c/good.bin"]
    assert result.status is Status.PARTIAL
    assert "artifacts/c/bad.bin" in report.manifest.collectors[0].reason


def test_manifest_from_before_a_schema_field_was_added_still_verifies(spool_dir: Path) -> None:
    from dfir_ar.evidence.manifest import canonical_json

    path = _small_bundle(spool_dir)
    members = read_members(path)
    doc = json.loads(members["manifest.json"])
    del doc["agent"]["name"]  # an optional field added after the first release
    members["manifest.json"] = canonical_json(doc)
    report = verify_bundle(repack(path, members, spool_dir / "old.tar.zst"))
    assert report.ok, report.problems
