"""s3:// against a real SeaweedFS: upload (single and multipart, server-checked SHA-256), list,
get, verify, presigned URL with curl, per-agent identities, object lock, and the faults."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dfir_ar.cli.bundles_remote import get_cmd, list_cmd, url_cmd
from dfir_ar.config.models import Config
from dfir_ar.errors import StoreError, VerificationFailed
from dfir_ar.evidence.retrieve import Filter, fetch_and_verify, find_bundle, list_bundles
from dfir_ar.evidence.spool import Uploader
from dfir_ar.evidence.stores.base import StoreUnavailable, open_store
from dfir_ar.evidence.stores.s3 import composite_checksum
from dfir_ar.evidence.verify import verify_bundle
from tests.conftest import require_tool
from tests.storage.conftest import (
    BUCKET,
    LOCKED_BUCKET,
    PREFIX,
    Seaweed,
    make_bundle,
    make_config,
    write_config_file,
)

MiB = 1024 * 1024


def _s3_config(tmp_path: Path, seaweed: Seaweed, *, bucket: str = BUCKET, identity: str = "admin",
               agent_id: str = "agent1", endpoint: str | None = None, **kw: Any) -> Config:
    return make_config(
        tmp_path, store=f"s3://{bucket}/{PREFIX}", endpoint=endpoint or seaweed.endpoint,
        identity=identity, agent_id=agent_id, **kw,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_list_get_verify_and_presign(tmp_path: Path, seaweed: Seaweed) -> None:
    bucket = seaweed.new_bucket()
    config = _s3_config(tmp_path, seaweed, bucket=bucket, multipart_threshold_mb=5, part_size_mb=5)
    small = make_bundle(config.spool_dir, size=10_000, rule_id=5712, alert_id="1700000000.1")
    large = make_bundle(config.spool_dir, size=12 * MiB, rule_id=5763,
                        created=datetime(2026, 1, 2, 3, 4, tzinfo=UTC))
    large_sha = _sha256(large.path)
    large_size = large.path.stat().st_size
    uploader = Uploader(config)
    uploader.check_store()
    assert uploader.drain_once() == 2
    assert uploader.pending() == []

    admin = seaweed.client()
    key = f"{PREFIX}/agent1/2026/01/02/{large.bundle_id}.tar.zst"
    head = admin.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == large_size
    assert head["Metadata"]["dfir-sha256"] == large_sha
    assert head["Metadata"]["dfir-agent"] == "agent1"
    assert head["Metadata"]["dfir-rule"] == "5763"
    # Multipart: 3 parts of 5 MiB; the server's composite SHA-256 is what we computed.
    assert head["ChecksumSHA256"].endswith("-3")
    data = admin.get_object(Bucket=bucket, Key=key)["Body"].read()
    parts = [hashlib.sha256(data[i:i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
    assert head["ChecksumSHA256"] == composite_checksum(parts)
    small_key = find_bundle(open_store(config), small.bundle_id).bundle_key
    small_head = admin.head_object(Bucket=bucket, Key=small_key, ChecksumMode="ENABLED")
    assert small_head["Metadata"]["dfir-alert"] == "1700000000.1"
    assert base64.b64decode(small_head["ChecksumSHA256"]).hex() == small_head["Metadata"]["dfir-sha256"]
    assert admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    # The reader fetches the 12 MiB bundle as parallel 5 MiB ranges.
    reader = _s3_config(tmp_path / "r", seaweed, bucket=bucket, identity="reader",
                        multipart_threshold_mb=5, part_size_mb=5)
    cfg = write_config_file(tmp_path / "reader.toml", reader)
    runner = CliRunner()
    listed = runner.invoke(list_cmd, ["-c", str(cfg), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [r["bundle_id"] for r in rows] == [large.bundle_id, small.bundle_id]
    assert rows[1]["rule_id"] == "5712" and rows[1]["srcip"] == "203.0.113.7"
    since = runner.invoke(list_cmd, ["-c", str(cfg), "--since", "2026-06-01", "--json"])
    assert [r["bundle_id"] for r in json.loads(since.output)] == [small.bundle_id]

    case = tmp_path / "case"
    got = runner.invoke(get_cmd, ["-c", str(cfg), "--allow-unsigned", large.bundle_id, "-o", str(case)])
    assert got.exit_code == 0, got.output
    assert _sha256(case / f"{large.bundle_id}.tar.zst") == large_sha
    assert (case / large.bundle_id / "artifacts/test/random.bin").stat().st_size == 12 * MiB
    assert verify_bundle(case / f"{large.bundle_id}.tar.zst").ok

    require_tool("curl")
    url = runner.invoke(url_cmd, ["-c", str(cfg), small.bundle_id, "--expires", "120"])
    assert url.exit_code == 0, url.output
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url.output
    fetched = tmp_path / "curl.tar.zst"
    curl = subprocess.run(["curl", "-sS", "-f", "-o", str(fetched), url.output.strip()],
                          capture_output=True, timeout=30, check=False)
    assert curl.returncode == 0, curl.stderr
    assert verify_bundle(fetched).ok
    # A URL with a forged expiry does not work.
    forged = url.output.strip().replace("X-Amz-Expires=120", "X-Amz-Expires=604800")
    bad = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", forged],
                         capture_output=True, timeout=30, check=False)
    assert bad.stdout.decode() == "403"


def test_bad_credentials_and_missing_bucket_are_reported_at_start(tmp_path: Path, seaweed: Seaweed) -> None:
    good = _s3_config(tmp_path, seaweed)
    wrong_secret = good.model_copy(update={"evidence": good.evidence.model_copy(
        update={"secret_access_key": "not-the-secret"})})
    with pytest.raises(StoreError, match="secret key does not match"):
        Uploader(wrong_secret).check_store()
    unknown = good.model_copy(update={"evidence": good.evidence.model_copy(
        update={"access_key_id": "NOSUCHKEY"})})
    with pytest.raises(StoreError, match="does not know access key"):
        Uploader(unknown).check_store()
    missing = make_config(tmp_path, store=f"s3://st-no-such-bucket/{PREFIX}", endpoint=seaweed.endpoint,
                          identity="admin")
    with pytest.raises(StoreError, match="'st-no-such-bucket' does not exist"):
        Uploader(missing).check_store()
    Uploader(good).check_store()  # and the right ones pass


def test_store_down_for_the_whole_run_loses_nothing(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = make_config(tmp_path, store=f"s3://{BUCKET}/{PREFIX}", endpoint=f"http://127.0.0.1:{port}",
                         identity="admin")
    bundle = make_bundle(config.spool_dir)
    uploader = Uploader(config)
    with pytest.raises(StoreUnavailable, match="did not answer"):
        uploader.check_store()
    with pytest.raises(StoreUnavailable, match="1 bundle"):
        uploader.drain_once()
    assert bundle.path.exists() and bundle.manifest_path.exists()


def test_tampered_in_the_store_fails_get_and_verify(tmp_path: Path, seaweed: Seaweed) -> None:
    bucket = seaweed.new_bucket()
    config = _s3_config(tmp_path, seaweed, bucket=bucket)
    bundle = make_bundle(config.spool_dir, size=50_000)
    Uploader(config).drain_once()
    admin = seaweed.client()
    entry = find_bundle(open_store(config), bundle.bundle_id)
    obj = admin.get_object(Bucket=bucket, Key=entry.bundle_key)
    data = bytearray(obj["Body"].read())
    data[1000] ^= 0x40
    # A forger with write access rewrites bytes and metadata together; verify still catches it.
    meta = dict(obj["Metadata"], **{"dfir-sha256": hashlib.sha256(data).hexdigest()})
    admin.put_object(Bucket=bucket, Key=entry.bundle_key, Body=bytes(data), Metadata=meta)
    case = tmp_path / "case"
    with pytest.raises(VerificationFailed, match="FAILED verification") as info:
        fetch_and_verify(open_store(config), bundle.bundle_id, case, public_key=None, allow_unsigned=True)
    assert "nothing was extracted" in str(info.value)
    assert not (case / bundle.bundle_id).exists()
    assert not (case / f"{bundle.bundle_id}.tar.zst").exists()


class _CuttingProxy:
    """A loopback TCP proxy to SeaweedFS that cuts each connection after ``budget`` bytes from
    the server: a download that breaks off half-way, for real."""

    def __init__(self, target_port: int, budget: int) -> None:
        self.budget = budget
        self.target = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.budget), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, budget: int | None) -> None:
        sent = 0
        try:
            while budget is None or sent < budget:
                data = src.recv(65536 if budget is None else min(65536, budget - sent))
                if not data:
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def cutting_proxy(seaweed: Seaweed) -> Iterator[_CuttingProxy]:
    proxy = _CuttingProxy(seaweed.s3_port, budget=256 * 1024)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.parametrize("ranged", [False, True], ids=["one-stream", "parallel-ranges"])
def test_truncated_download_is_an_error_and_nothing_is_extracted(
    tmp_path: Path, seaweed: Seaweed, cutting_proxy: _CuttingProxy, ranged: bool
) -> None:
    bucket = seaweed.new_bucket()
    sizes: dict[str, Any] = {"multipart_threshold_mb": 5, "part_size_mb": 5} if ranged else {}
    config = _s3_config(tmp_path, seaweed, bucket=bucket, **sizes)
    bundle = make_bundle(config.spool_dir, size=(12 if ranged else 2) * MiB)
    Uploader(config).drain_once()
    via_proxy = _s3_config(tmp_path / "p", seaweed, bucket=bucket,
                           endpoint=f"http://127.0.0.1:{cutting_proxy.port}", **sizes)
    case = tmp_path / "case"
    with pytest.raises(StoreError, match=r"truncated|broke off") as info:
        fetch_and_verify(open_store(via_proxy), bundle.bundle_id, case, public_key=None, allow_unsigned=True)
    assert "nothing was extracted" in str(info.value)
    assert list(case.iterdir()) == []


def test_agent_identity_is_confined_to_its_prefix(tmp_path: Path, seaweed: Seaweed) -> None:
    agent1 = _s3_config(tmp_path / "a1", seaweed, identity="agent1", agent_id="agent1")
    agent2 = _s3_config(tmp_path / "a2", seaweed, identity="agent2", agent_id="agent2")
    Uploader(agent1).check_store()
    own = make_bundle(agent1.spool_dir, agent_id="agent1")
    assert Uploader(agent1).drain_once() == 1
    theirs = make_bundle(agent2.spool_dir, agent_id="agent2")
    assert Uploader(agent2).drain_once() == 1

    # agent1 tries to write into agent2's prefix (a manifest claiming agent2): refused, kept.
    forged = make_bundle(agent1.spool_dir, agent_id="agent2")
    with pytest.raises(StoreError, match="access denied"):
        Uploader(agent1).drain_once()
    assert forged.path.exists() and forged.manifest_path.exists()
    a1 = seaweed.client("agent1")
    with pytest.raises(Exception, match=r"AccessDenied|Forbidden|403"):
        a1.put_object(Bucket=BUCKET, Key=f"{PREFIX}/agent2/x", Body=b"x")
    # ... and cannot read agent2's evidence either.
    store2 = open_store(agent2)
    theirs_key = find_bundle(store2, theirs.bundle_id, agent="agent2").bundle_key
    with pytest.raises(Exception, match=r"AccessDenied|Forbidden|403"):
        a1.get_object(Bucket=BUCKET, Key=theirs_key)
    with pytest.raises(StoreError, match="access denied"):
        fetch_and_verify(open_store(agent1), theirs.bundle_id, tmp_path / "x", public_key=None,
                         allow_unsigned=True, agent="agent2")

    # The responder's read-only identity sees both agents.
    reader = _s3_config(tmp_path / "r", seaweed, identity="reader")
    ids = {e.bundle_id for e in list_bundles(open_store(reader), Filter())}
    assert {own.bundle_id, theirs.bundle_id} <= ids
    with pytest.raises(StoreError, match="access denied"):
        Uploader(reader).check_store()  # and it cannot write


def test_object_lock_refuses_deleting_a_locked_bundle(tmp_path: Path, seaweed: Seaweed) -> None:
    bucket = seaweed.new_bucket(lock=True)
    config = _s3_config(tmp_path, seaweed, bucket=bucket, object_lock_mode="COMPLIANCE",
                        object_lock_days=1)
    bundle = make_bundle(config.spool_dir)
    uploader = Uploader(config)
    uploader.check_store()
    assert uploader.drain_once() == 1
    admin = seaweed.client()
    key = find_bundle(open_store(config), bundle.bundle_id).bundle_key
    head = admin.head_object(Bucket=bucket, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(hours=23)
    with pytest.raises(Exception, match=r"AccessDenied|ObjectLocked|403"):
        admin.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])
    # Overwriting makes a new version; the locked one stays readable.
    admin.put_object(Bucket=bucket, Key=key, Body=b"overwritten")
    original = admin.get_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])["Body"].read()
    assert hashlib.sha256(original).hexdigest() == head["Metadata"]["dfir-sha256"]

    # Lock asked for on a bucket without object lock: a clear error at start.
    plain = _s3_config(tmp_path / "p", seaweed, bucket=seaweed.new_bucket(),
                       object_lock_mode="GOVERNANCE", object_lock_days=1)
    with pytest.raises(StoreError, match="object lock"):
        Uploader(plain).check_store()


def test_sse_and_content_md5_options(tmp_path: Path, seaweed: Seaweed) -> None:
    bucket = seaweed.new_bucket()
    config = _s3_config(tmp_path, seaweed, bucket=bucket, sse="AES256", content_md5=True,
                        multipart_threshold_mb=5, part_size_mb=5)
    small = make_bundle(config.spool_dir, size=1000)
    large = make_bundle(config.spool_dir, size=11 * MiB)
    assert Uploader(config).drain_once() == 2
    admin = seaweed.client()
    store = open_store(config)
    for b in (small, large):
        key = find_bundle(store, b.bundle_id).bundle_key
        head = admin.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"
        body = admin.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == head["Metadata"]["dfir-sha256"]


def test_different_object_at_the_same_key_is_never_overwritten(tmp_path: Path, seaweed: Seaweed) -> None:
    bucket = seaweed.new_bucket()
    config = _s3_config(tmp_path, seaweed, bucket=bucket)
    bundle = make_bundle(config.spool_dir)
    from dfir_ar.evidence.spool import ManifestFacts
    from dfir_ar.evidence.stores.base import bundle_key

    facts = ManifestFacts.from_json(bundle.manifest_path.read_bytes())
    key = bundle_key(PREFIX, facts.agent_id, facts.created, facts.bundle_id)
    admin = seaweed.client()
    admin.put_object(Bucket=bucket, Key=key, Body=b"planted by someone else")
    with pytest.raises(StoreError, match="never overwritten"):
        Uploader(config).drain_once()
    assert bundle.path.exists()
    assert admin.get_object(Bucket=bucket, Key=key)["Body"].read() == b"planted by someone else"


def test_a_compromised_agent_cannot_destroy_its_locked_evidence(tmp_path: Path, seaweed: Seaweed) -> None:
    config = _s3_config(tmp_path, seaweed, bucket=LOCKED_BUCKET, identity="agent1",
                        object_lock_mode="COMPLIANCE", object_lock_days=1)
    bundle = make_bundle(config.spool_dir)
    uploader = Uploader(config)
    uploader.check_store()
    assert uploader.drain_once() == 1
    entry = find_bundle(open_store(config), bundle.bundle_id, agent="agent1")
    a1 = seaweed.client("agent1")
    for key in (entry.bundle_key, entry.manifest_key):
        head = a1.head_object(Bucket=LOCKED_BUCKET, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        with pytest.raises(Exception, match=r"AccessDenied|ObjectLocked|403"):
            a1.delete_object(Bucket=LOCKED_BUCKET, Key=key, VersionId=head["VersionId"])
    # An identity without the retention right is told at start, not at its first bundle.
    agent2 = _s3_config(tmp_path / "a2", seaweed, bucket=LOCKED_BUCKET, identity="agent2",
                        agent_id="agent2", object_lock_mode="COMPLIANCE", object_lock_days=1)
    with pytest.raises(StoreError, match="PutObjectRetention"):
        Uploader(agent2).check_store()
    # The responder still gets the original, verified.
    reader = _s3_config(tmp_path / "r", seaweed, bucket=LOCKED_BUCKET, identity="reader")
    fetched = fetch_and_verify(open_store(reader), bundle.bundle_id, tmp_path / "case",
                               public_key=None, allow_unsigned=True)
    assert fetched.report.ok
