"""Nothing lost across crashes and outages: an uploader killed with SIGKILL mid-multipart resumes
from its uploaded parts; bundles made while the store is down arrive once it is back."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dfir_ar.evidence.retrieve import find_bundle
from dfir_ar.evidence.spool import RESUME_SUFFIX, Uploader
from dfir_ar.evidence.stores.base import open_store
from tests.storage.conftest import PREFIX, Seaweed, make_bundle, make_config, write_config_file

MiB = 1024 * 1024

_UPLOADER = (
    "import logging, sys\n"
    "from dfir_ar.cli.bundles_remote import push_cmd\n"
    "logging.basicConfig(level=logging.INFO)\n"
    "push_cmd.main(['-c', sys.argv[1]], standalone_mode=True)\n"
)


def _parts_logged(resume: Path) -> int:
    try:
        lines = resume.read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if '"t": "part"' in line)


def test_kill_9_mid_multipart_resumes_from_uploaded_parts(tmp_path: Path, seaweed: Seaweed) -> None:
    bucket = seaweed.new_bucket()
    common = {"store": f"s3://{bucket}/{PREFIX}", "endpoint": seaweed.endpoint, "identity": "admin",
              "multipart_threshold_mb": 5, "part_size_mb": 5}
    # One part at a time at 16 MiB/s: the 64 MiB upload takes ~4 s, time to kill it mid-way.
    slow = make_config(tmp_path, upload_concurrency=1, upload_rate_limit_mbps=16, **common)  # type: ignore[arg-type]
    bundle = make_bundle(slow.spool_dir, size=64 * MiB)
    sha = hashlib.sha256(bundle.path.read_bytes()).hexdigest()
    size = bundle.path.stat().st_size
    resume = bundle.path.with_name(bundle.bundle_id + RESUME_SUFFIX)
    cfg = write_config_file(tmp_path / "slow.toml", slow)
    proc = subprocess.Popen([sys.executable, "-c", _UPLOADER, str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while _parts_logged(resume) < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "uploader never logged 3 parts"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done_before = _parts_logged(resume)
    assert 3 <= done_before < 13, "the kill must land mid-upload"
    assert bundle.path.exists() and bundle.manifest_path.exists()
    admin = seaweed.client()
    uploads = admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert len(uploads) == 1

    # Restart (full speed): only the missing parts go up, and the object is whole.
    fast = make_config(tmp_path, **common)  # type: ignore[arg-type]
    uploader = Uploader(fast)
    assert uploader.drain_once() == 1
    stats = uploader.uploaded[0].stats
    assert stats.parts_total == 13
    assert stats.parts_reused >= done_before
    assert stats.parts_uploaded == 13 - stats.parts_reused
    assert not bundle.path.exists() and not resume.exists()
    key = find_bundle(open_store(fast), bundle.bundle_id).bundle_key
    head = admin.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == size
    assert head["Metadata"]["dfir-sha256"] == sha
    assert head["ChecksumSHA256"].endswith("-13")
    body = admin.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha
    assert admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_bundles_arrive_after_the_store_comes_back(tmp_path: Path, live_seaweed: Seaweed) -> None:
    bucket = live_seaweed.new_bucket()
    config = make_config(tmp_path, store=f"s3://{bucket}/{PREFIX}", endpoint=live_seaweed.endpoint,
                         identity="admin", retry_max_seconds=1.0)
    live_seaweed.stop()
    bundles = [make_bundle(config.spool_dir, size=30_000) for _ in range(3)]
    uploader = Uploader(config, poll_interval=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=uploader.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(3.0)  # a few failed, backed-off attempts while the store is down
        assert len(uploader.pending()) == 3
        assert all(b.path.exists() for b in bundles)
        live_seaweed.start()
        deadline = time.monotonic() + 30
        while uploader.pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert uploader.pending() == []
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    store = open_store(config)
    for b in bundles:
        entry = find_bundle(store, b.bundle_id)
        assert entry.agent_id == "agent1"
        assert store.head(entry.bundle_key) is not None
    assert json.loads(store.read_small(entry.manifest_key))["bundle_id"] == bundles[-1].bundle_id


def test_resume_log_of_an_upload_gone_from_the_store_starts_afresh(
    tmp_path: Path, seaweed: Seaweed
) -> None:
    from dfir_ar.evidence.spool import ManifestFacts
    from dfir_ar.evidence.stores.base import bundle_key, sha256_file
    from dfir_ar.evidence.stores.s3 import ResumeLog, _ResumeHeader

    bucket = seaweed.new_bucket()
    config = make_config(tmp_path, store=f"s3://{bucket}/{PREFIX}", endpoint=seaweed.endpoint,
                         identity="admin", multipart_threshold_mb=5, part_size_mb=5)
    bundle = make_bundle(config.spool_dir, size=12 * MiB)
    facts = ManifestFacts.from_json(bundle.manifest_path.read_bytes())
    key = bundle_key(PREFIX, facts.agent_id, facts.created, facts.bundle_id)
    # What a crash leaves when the store meanwhile aborted the upload (lifecycle rule, admin).
    sha = sha256_file(bundle.path)
    log = ResumeLog(bundle.path.with_name(bundle.bundle_id + RESUME_SUFFIX))
    log.start(_ResumeHeader(key, "no-such-upload-id", bundle.path.stat().st_size, sha, 5 * MiB))
    log.add_part(1, '"0123456789abcdef0123456789abcdef"', "AAAA")
    uploader = Uploader(config)
    assert uploader.drain_once() == 1
    stats = uploader.uploaded[0].stats
    assert (stats.parts_reused, stats.parts_uploaded, stats.parts_total) == (0, 3, 3)
    body = seaweed.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha
