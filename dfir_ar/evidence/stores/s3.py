"""``s3://BUCKET/PREFIX``: the one module that talks to boto3. Every botocore exception is
translated here into StoreError (or StoreUnavailable when the store cannot be reached) with a
message that says what to fix.

Integrity: every PUT and every part carries ``x-amz-checksum-sha256``; S3, MinIO and SeaweedFS
(tested: 4.x) recompute it and refuse the request with BadDigest on a mismatch, so bytes damaged
in transit never become an object. After an upload, ``head_object(ChecksumMode=ENABLED)`` must
report the expected size and checksum (the full SHA-256 for a single PUT; the composite
``sha256(part digests)-N`` for multipart) and our ``dfir-sha256`` metadata before the caller may
drop its copy. A server that keeps no checksum (some older S3 clones) is accepted on size and
metadata, and the fallback is logged once; where a server ignores x-amz-checksum-* entirely, set
``evidence.content_md5 = true`` so each request also carries Content-MD5, which every S3 server
checks.

Large bundles go up as multipart with ``upload_concurrency`` parts in flight; the part size grows
past ``part_size_mb`` when needed so no object needs more than 10,000 parts (S3's limit), so
objects far over 5 GB work, and shrinks (to 8 MiB at least) so a mid-sized bundle still keeps
every connection busy. Each finished part is appended to a small JSONL resume file; after a
crash the upload id and parts are read back, confirmed with ``list_parts`` and only the missing
parts are sent.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from dfir_ar.config.models import EvidenceConfig
from dfir_ar.errors import StoreError, UsageError
from dfir_ar.evidence.private import open_private
from dfir_ar.evidence.stores.base import (
    HEALTHCHECK_DIR,
    NO_PROGRESS,
    EvidenceStore,
    ObjectInfo,
    ObjectMeta,
    Progress,
    StoreUnavailable,
    UploadStats,
    agent_prefix,
)

log = logging.getLogger("dfir_ar.evidence.s3")

MAX_PARTS = 10_000
MIN_PART = 5 * 1024 * 1024
MAX_PART = 5 * 1024 * 1024 * 1024
MAX_OBJECT = 5 * 1024**4
SMALL_PART = 8 * 1024 * 1024
MAX_PRESIGN = 7 * 24 * 3600
"""SigV4 presigned URLs are valid for at most seven days."""
_READ_BLOCK = 1 << 20


def choose_part_size(size: int, configured: int, workers: int = 1) -> int:
    """``configured`` (at least 5 MiB), grown in whole MiB so ``size`` fits 10,000 parts, and
    shrunk (not below 8 MiB) where the bundle would give fewer than two parts per worker, so
    every connection is busy on mid-sized bundles."""
    if size > MAX_OBJECT:
        raise StoreError(f"{size} bytes is over S3's object limit of 5 TiB")
    part = max(configured, MIN_PART)
    spread = math.ceil(size / (2 * max(1, workers)) / (1 << 20)) * (1 << 20)
    part = max(min(part, spread), min(part, SMALL_PART))
    needed = math.ceil(size / MAX_PARTS)
    if needed > part:
        part = math.ceil(needed / (1 << 20)) * (1 << 20)
    if part > MAX_PART:
        raise StoreError(f"{size} bytes needs parts over S3's 5 GiB part limit")
    return part


def b64_sha256(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def composite_checksum(part_digests: list[bytes]) -> str:
    """What S3 reports as ChecksumSHA256 for a multipart object: sha256 of the concatenated part
    digests, base64, then ``-<number of parts>``."""
    return f"{b64_sha256(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


class FileRange(io.RawIOBase):
    """A read-only, seekable window on a file, so a part streams from disk instead of sitting in
    memory (8 parts of 64 MiB in flight would otherwise cost 512 MiB)."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        super().__init__()
        self._fh = path.open("rb")
        self._start = start
        self._length = length
        self._pos = 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = min(max(0, base + offset), self._length)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        want = min(len(view), self._length - self._pos)
        if want <= 0:
            return 0
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(view[:want])
        self._pos += got
        return got

    def close(self) -> None:
        self._fh.close()
        super().close()


def hash_range(path: Path, start: int, length: int) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        fh.seek(start)
        left = length
        while left > 0:
            block = fh.read(min(_READ_BLOCK * 8, left))
            if not block:
                raise StoreError(f"{path} shrank while it was uploaded; it stays in the spool")
            digest.update(block)
            left -= len(block)
    return digest.digest()


class RateLimit:
    """A token bucket shared by the part workers (evidence.upload_rate_limit_mbps), so an agent
    on a thin link does not starve its own traffic while it uploads a large capture."""

    def __init__(self, bytes_per_second: float | None) -> None:
        self._rate = bytes_per_second
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def acquire(self, nbytes: int) -> None:
        if not self._rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + nbytes / self._rate
        delay = start - now
        if delay > 0:
            time.sleep(delay)


@dataclass
class _ResumeHeader:
    key: str
    upload_id: str
    size: int
    sha256: str
    part_size: int


class ResumeLog:
    """Append-only JSONL next to the bundle: a header line, then one line per finished part.

    Appending (not rewriting) keeps the cost per part constant at 10,000 parts; a line torn by a
    crash is ignored on reading, and that part is simply sent again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._broken = False

    def load(self) -> tuple[_ResumeHeader | None, dict[int, tuple[str, str]]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None, {}
        except OSError as exc:
            log.warning("cannot read resume file %s (%s); starting the upload again", self.path, exc)
            return None, {}
        header: _ResumeHeader | None = None
        parts: dict[int, tuple[str, str]] = {}
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if not isinstance(item, dict):
                continue
            if item.get("t") == "upload":
                with contextlib.suppress(TypeError, KeyError):
                    header = _ResumeHeader(**{k: item[k] for k in _ResumeHeader.__dataclass_fields__})
            elif item.get("t") == "part" and header is not None:
                with contextlib.suppress(TypeError, KeyError, ValueError):
                    parts[int(item["n"])] = (str(item["etag"]), str(item["sha256"]))
        return header, parts

    def start(self, header: _ResumeHeader) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open_private(tmp) as fh:
                fh.write((json.dumps({"t": "upload", **asdict(header)}) + "\n").encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            self._give_up(exc)

    def add_part(self, number: int, etag: str, checksum: str) -> None:
        line = json.dumps({"t": "part", "n": number, "etag": etag, "sha256": checksum}) + "\n"
        with self._lock:
            if self._broken:
                return
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        # The log only saves work after a crash; a full spool disk must not stop the upload
        # that would free it.
        self._broken = True
        log.warning(
            "cannot write the resume log %s (%s); the upload goes on, but a crash now would "
            "restart it from the first part", self.path, exc.strerror or exc,
        )
        with contextlib.suppress(OSError):
            self.path.unlink()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class S3Store(EvidenceStore):
    def __init__(self, bucket: str, prefix: str, evidence: EvidenceConfig, *, url: str) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.evidence = evidence
        self.url = url
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._warned_no_checksum = False
        rate = evidence.upload_rate_limit_mbps
        self._rate = RateLimit(rate * 1024 * 1024 if rate else None)

    # -- client and error translation -------------------------------------------------------

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config as BotoConfig
        except ImportError as exc:
            raise StoreError(
                f"{self.url}: boto3 is not installed; pip install 'dfir-ar[s3]'"
            ) from exc
        ev = self.evidence
        config = BotoConfig(
            signature_version="s3v4",
            # S3-compatible servers (SeaweedFS, MinIO) serve buckets by path, not by host name.
            s3={
                "addressing_style": "path" if ev.endpoint_url else "auto",
                # Every write carries x-amz-checksum-sha256 (a signed header the server checks
                # against the body), so SigV4 need not hash each body a second time for
                # x-amz-content-sha256; botocore otherwise does that on http:// endpoints.
                "payload_signing_enabled": False,
            },
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=ev.upload_concurrency + 4,
            # We send our own SHA-256 on every write; do not add a second (CRC) checksum.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        kwargs: dict[str, Any] = {"config": config}
        if ev.endpoint_url:
            kwargs["endpoint_url"] = ev.endpoint_url
        kwargs["region_name"] = ev.region or os.environ.get("AWS_REGION") or "us-east-1"
        if ev.access_key_id or ev.secret_access_key:
            if not (ev.access_key_id and ev.secret_access_key):
                raise StoreError(
                    "evidence.access_key_id and evidence.secret_access_key go together; set both "
                    "or neither (then the AWS credential chain is used)"
                )
            kwargs["aws_access_key_id"] = ev.access_key_id
            kwargs["aws_secret_access_key"] = ev.secret_access_key
        session = boto3.session.Session()
        return session.client("s3", **kwargs)

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def _error(self, exc: BaseException, action: str, key: str | None = None) -> StoreError:
        """Translate a botocore/boto3 exception into a StoreError that says what to fix."""
        from botocore import exceptions as bce

        where = self._where(key)
        endpoint = self.evidence.endpoint_url or "AWS S3"
        if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
            return StoreError(
                f"cannot {action} {where}: no S3 credentials; set evidence.access_key_id and "
                "evidence.secret_access_key, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an "
                "AWS profile"
            )
        if isinstance(
            exc,
            bce.EndpointConnectionError
            | bce.ConnectTimeoutError
            | bce.ReadTimeoutError
            | bce.ConnectionClosedError
            | bce.ResponseStreamingError
            | bce.IncompleteReadError,
        ):
            return StoreUnavailable(
                f"cannot {action} {where}: the store at {endpoint} did not answer ({exc}); "
                "is it running and reachable? (evidence.endpoint_url)"
            )
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            message = str(err.get("Message", "")) or str(exc)
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code == "InvalidAccessKeyId":
                return StoreError(
                    f"cannot {action} {where}: the store does not know access key "
                    f"{self._access_key_hint()}; check evidence.access_key_id (or AWS_ACCESS_KEY_ID)"
                )
            if code == "SignatureDoesNotMatch":
                return StoreError(
                    f"cannot {action} {where}: the secret key does not match access key "
                    f"{self._access_key_hint()}; check evidence.secret_access_key "
                    "(or AWS_SECRET_ACCESS_KEY), and the machine's clock"
                )
            if code == "RequestTimeTooSkewed":
                return StoreError(
                    f"cannot {action} {where}: this machine's clock is too far off the store's; "
                    "fix NTP"
                )
            if code == "NoSuchBucket" or (status == 404 and key is None):
                return StoreError(
                    f"cannot {action} {where}: bucket {self.bucket!r} does not exist at {endpoint}; "
                    "create it (with object lock enabled if you want WORM retention) or fix "
                    "evidence.store"
                )
            if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
                lock = (
                    "; with object_lock_mode set it also needs s3:PutObjectRetention there"
                    if self.evidence.object_lock_mode
                    else ""
                )
                return StoreError(
                    f"cannot {action} {where}: access denied for access key "
                    f"{self._access_key_hint()}; an agent identity may only write under "
                    "<prefix>/<its agent_id>/ (see examples/storage/ for the policy), and "
                    f"the agent_id in [global] must match{lock}"
                )
            if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
                return StoreError(
                    f"cannot {action} {where}: the store computed a different checksum than "
                    "the one sent (bytes damaged in transit or the file changed); nothing was "
                    "stored, the bundle stays in the spool"
                )
            if code == "PreconditionFailed" or status == 412:
                return StoreError(
                    f"cannot {action} {where}: the object changed while it was read (its ETag no "
                    "longer matches); run the command again"
                )
            if code == "NoSuchKey" or (status == 404 and key is not None):
                return StoreError(f"cannot {action} {where}: no such object")
            if code in ("InvalidRequest", "InvalidArgument") and "lock" in message.lower():
                return StoreError(
                    f"cannot {action} {where}: {message}; object_lock_mode needs a bucket created "
                    "with object lock enabled"
                )
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                return StoreUnavailable(f"cannot {action} {where}: the store failed ({code}: {message})")
            return StoreError(f"cannot {action} {where}: {code or status}: {message}")
        if isinstance(exc, bce.BotoCoreError):
            return StoreError(f"cannot {action} {where}: {exc}")
        if isinstance(exc, OSError):
            return StoreError(f"cannot {action} {where}: {exc.strerror or exc}")
        return StoreError(f"cannot {action} {where}: {exc}")

    def _access_key_hint(self) -> str:
        key = self.evidence.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID") or "(from the AWS chain)"
        return key if len(key) <= 8 else f"{key[:4]}...{key[-4:]}"

    def _call(self, action: str, key: str | None, fn: str, **kwargs: Any) -> Any:
        from botocore import exceptions as bce

        try:
            return getattr(self.client, fn)(**kwargs)
        except (bce.BotoCoreError, bce.ClientError) as exc:
            raise self._error(exc, action, key) from None

    # -- the interface ----------------------------------------------------------------------

    def check(self, agent_id: str) -> None:
        from botocore import exceptions as bce

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bce.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # An agent identity may lack ListBucket (HeadBucket needs it); the write test below
            # is the real proof. Anything else (404, bad key, bad secret) is already the answer.
            if status != 403:
                raise self._error(exc, "reach the bucket", None) from None
        except bce.BotoCoreError as exc:
            raise self._error(exc, "reach the bucket", None) from None
        if self.evidence.object_lock_mode:
            self._check_object_lock()
        key = agent_prefix(self.prefix, agent_id) + f"{HEALTHCHECK_DIR}/probe"
        body = b"dfir-ar store check\n"
        # With object lock configured the probe carries a one-day retention, so a missing
        # PutObjectRetention right shows now, not at the first bundle; one tiny version per
        # start stays until that day is over.
        lock: dict[str, Any] = {}
        if self.evidence.object_lock_mode:
            lock = {
                "ObjectLockMode": self.evidence.object_lock_mode,
                "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=1),
            }
        self._call(
            "write a test object to",
            key,
            "put_object",
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ChecksumSHA256=b64_sha256(hashlib.sha256(body).digest()),
            **self._sse_args(),
            **lock,
        )
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (bce.ClientError, bce.BotoCoreError) as exc:
            # Hardened agent identities have no delete right, and object lock may forbid it;
            # the probe key is fixed, so at most one small object stays behind.
            log.debug("store check: could not delete %s (%s); left in place", key, exc)

    def _check_object_lock(self) -> None:
        from botocore import exceptions as bce

        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except bce.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ObjectLockConfigurationNotFoundError":
                raise StoreError(
                    f"{self._where(None)}: evidence.object_lock_mode is set but the bucket has no "
                    "object lock; create the bucket with object lock enabled "
                    "(aws s3api create-bucket --object-lock-enabled-for-bucket) or unset it"
                ) from None
            log.debug("cannot read the bucket's object lock configuration (%s); not checked", code)
            return
        except bce.BotoCoreError as exc:
            raise self._error(exc, "read the object lock configuration of", None) from None
        if conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise StoreError(
                f"{self._where(None)}: evidence.object_lock_mode is set but object lock is not "
                "enabled on the bucket"
            )

    def _sse_args(self) -> dict[str, str]:
        ev = self.evidence
        if ev.sse is None:
            return {}
        args: dict[str, str] = {"ServerSideEncryption": str(ev.sse)}
        if ev.sse == "aws:kms" and ev.sse_kms_key_id:
            args["SSEKMSKeyId"] = ev.sse_kms_key_id
        return args

    def _lock_args(self) -> dict[str, Any]:
        ev = self.evidence
        if ev.object_lock_mode is None or ev.object_lock_days is None:
            return {}
        until = datetime.now(UTC) + timedelta(days=ev.object_lock_days)
        return {"ObjectLockMode": ev.object_lock_mode, "ObjectLockRetainUntilDate": until}

    def _md5_args(self, path: Path, start: int, length: int) -> dict[str, str]:
        if not self.evidence.content_md5:
            return {}
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as fh:
            fh.seek(start)
            left = length
            while left > 0 and (block := fh.read(min(_READ_BLOCK, left))):
                digest.update(block)
                left -= len(block)
        return {"ContentMD5": base64.b64encode(digest.digest()).decode("ascii")}

    def put_file(
        self,
        path: Path,
        key: str,
        meta: ObjectMeta,
        *,
        resume_state: Path | None = None,
        progress: Progress = NO_PROGRESS,
        stats: UploadStats | None = None,
    ) -> ObjectInfo:
        stats = stats if stats is not None else UploadStats()
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from None
        existing = self.head(key)
        if (
            existing is not None
            and existing.meta is not None
            and existing.meta.sha256 == meta.sha256
            and existing.size == size
        ):
            # Uploaded before a crash that came before the spool could drop its copy.
            stats.skipped_existing = True
            if resume_state is not None:
                ResumeLog(resume_state).remove()
            return existing
        if existing is not None:
            # Bundle ids are unique, so different bytes under the same key mean someone else
            # wrote there: keep both copies and let a human look.
            theirs = existing.meta.sha256 if existing.meta else "unknown"
            raise StoreError(
                f"{self._where(key)} already exists with different content (SHA-256 {theirs}, "
                f"ours {meta.sha256}); evidence is never overwritten, the bundle stays in the "
                "spool; investigate the object in the store"
            )
        threshold = self.evidence.multipart_threshold_mb * 1024 * 1024
        if size < max(threshold, MIN_PART):
            expected = self._put_single(path, key, meta, size, progress, stats)
        else:
            expected = self._put_multipart(path, key, meta, size, resume_state, progress, stats)
        return self.confirm(key, size, meta.sha256, expected)

    def _put_single(
        self, path: Path, key: str, meta: ObjectMeta, size: int, progress: Progress, stats: UploadStats
    ) -> str:
        checksum = b64_sha256(bytes.fromhex(meta.sha256))
        self._rate.acquire(size)
        body = FileRange(path, 0, size)
        try:
            self._call(
                "upload",
                key,
                "put_object",
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentLength=size,
                ChecksumSHA256=checksum,
                Metadata=meta.as_dict(),
                ContentType=_content_type(key),
                **self._md5_args(path, 0, size),
                **self._sse_args(),
                **self._lock_args(),
            )
        finally:
            body.close()
        stats.bytes_sent += size
        stats.parts_total = stats.parts_uploaded = 1
        progress(size)
        return checksum

    def _put_multipart(
        self,
        path: Path,
        key: str,
        meta: ObjectMeta,
        size: int,
        resume_state: Path | None,
        progress: Progress,
        stats: UploadStats,
    ) -> str:
        part_size = choose_part_size(
            size, self.evidence.part_size_mb * 1024 * 1024, self.evidence.upload_concurrency
        )
        count = math.ceil(size / part_size)
        stats.parts_total = count
        resume = ResumeLog(resume_state) if resume_state is not None else None
        header, recorded = resume.load() if resume is not None else (None, {})
        done: dict[int, tuple[str, str]] = {}
        upload_id: str | None = None
        if (
            header is not None
            and (header.key, header.size, header.sha256) == (key, size, meta.sha256)
            and MIN_PART <= header.part_size <= MAX_PART
            and math.ceil(size / header.part_size) <= MAX_PARTS
        ):
            # The parts already sent fix the part size, even if the config changed since.
            part_size = header.part_size
            count = math.ceil(size / part_size)
            stats.parts_total = count
            on_server = self._list_parts(key, header.upload_id)
            if on_server is not None:
                upload_id = header.upload_id
                for number, (etag, checksum) in recorded.items():
                    expected_len = min(part_size, size - (number - 1) * part_size)
                    if on_server.get(number) == (etag, expected_len):
                        done[number] = (etag, checksum)
                log.info(
                    "resuming upload of %s: %d of %d parts already in the store",
                    key, len(done), count,
                )
        if upload_id is None:
            created = self._call(
                "start a multipart upload of",
                key,
                "create_multipart_upload",
                Bucket=self.bucket,
                Key=key,
                ChecksumAlgorithm="SHA256",
                Metadata=meta.as_dict(),
                ContentType=_content_type(key),
                **self._sse_args(),
                **self._lock_args(),
            )
            upload_id = str(created["UploadId"])
            if resume is not None:
                resume.start(_ResumeHeader(key, upload_id, size, meta.sha256, part_size))
        stats.parts_reused = len(done)
        for number in done:
            progress(min(part_size, size - (number - 1) * part_size))
        todo = [n for n in range(1, count + 1) if n not in done]
        lock = threading.Lock()

        # Part checksums are computed ahead by two hashing threads (SHA-256 runs at ~1.5 GB/s,
        # far ahead of the network), so a sender never stalls hashing its next part and the
        # connections do not start and pause in waves.
        hashers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dfir-hash")
        digests: dict[int, Future[bytes]] = {
            n: hashers.submit(
                hash_range, path, (n - 1) * part_size, min(part_size, size - (n - 1) * part_size)
            )
            for n in todo
        }

        def send(number: int) -> None:
            start = (number - 1) * part_size
            length = min(part_size, size - start)
            checksum = b64_sha256(digests[number].result())
            self._rate.acquire(length)
            body = FileRange(path, start, length)
            try:
                reply = self._call(
                    f"upload part {number}/{count} of",
                    key,
                    "upload_part",
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentLength=length,
                    ChecksumSHA256=checksum,
                    **self._md5_args(path, start, length),
                )
            finally:
                body.close()
            etag = str(reply["ETag"])
            if resume is not None:
                resume.add_part(number, etag, checksum)
            with lock:
                done[number] = (etag, checksum)
                stats.parts_uploaded += 1
                stats.bytes_sent += length
            progress(length)

        workers = max(1, min(self.evidence.upload_concurrency, len(todo)))
        try:
            if todo:
                _run_all(send, todo, workers, "dfir-upload")
        finally:
            hashers.shutdown(wait=True, cancel_futures=True)
        parts = [
            {"PartNumber": n, "ETag": done[n][0], "ChecksumSHA256": done[n][1]}
            for n in sorted(done)
        ]
        expected = composite_checksum([base64.b64decode(done[n][1]) for n in sorted(done)])
        from botocore import exceptions as bce

        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except bce.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchUpload":
                # Completed just before a crash: the object is there, confirm() decides.
                log.info("upload %s of %s was already completed", upload_id, key)
            else:
                raise self._error(exc, "complete the multipart upload of", key) from None
        except bce.BotoCoreError as exc:
            raise self._error(exc, "complete the multipart upload of", key) from None
        if resume is not None:
            resume.remove()
        return expected

    def _list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """The parts the server holds for an upload, or None if the upload is gone."""
        from botocore import exceptions as bce

        found: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            try:
                reply = self.client.list_parts(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
                )
            except bce.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
                    log.info("upload %s of %s is gone from the store; starting again", upload_id, key)
                    return None
                raise self._error(exc, "list the uploaded parts of", key) from None
            except bce.BotoCoreError as exc:
                raise self._error(exc, "list the uploaded parts of", key) from None
            for part in reply.get("Parts", []):
                found[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
            if not reply.get("IsTruncated"):
                return found
            marker = int(reply.get("NextPartNumberMarker", 0))

    def confirm(self, key: str, size: int, sha256_hex: str, checksum: str | None) -> ObjectInfo:
        """Raise unless the store now holds ``key`` with this size and SHA-256."""
        reply = self._call(
            "confirm", key, "head_object", Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
        )
        got_size = int(reply.get("ContentLength", -1))
        if got_size != size:
            raise StoreError(f"{self._where(key)}: the store holds {got_size} bytes, expected {size}")
        meta = ObjectMeta.from_dict(dict(reply.get("Metadata", {})))
        if meta is None or meta.sha256 != sha256_hex:
            raise StoreError(
                f"{self._where(key)}: the store's SHA-256 metadata does not match the bundle"
            )
        server_sum = reply.get("ChecksumSHA256")
        if server_sum is None:
            if not self._warned_no_checksum:
                log.warning(
                    "%s keeps no SHA-256 checksum; uploads are confirmed by size and metadata "
                    "only (set evidence.content_md5 = true for a per-request digest)",
                    self.evidence.endpoint_url or "the store",
                )
                self._warned_no_checksum = True
        elif checksum is not None and server_sum != checksum:
            raise StoreError(
                f"{self._where(key)}: the store reports checksum {server_sum}, expected {checksum}"
            )
        return self._info(key, reply)

    def _info(self, key: str, reply: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=int(reply.get("ContentLength", reply.get("Size", 0))),
            modified=reply.get("LastModified"),
            meta=ObjectMeta.from_dict(dict(reply.get("Metadata", {}))),
            lock_mode=reply.get("ObjectLockMode"),
            lock_until=reply.get("ObjectLockRetainUntilDate"),
            version_id=reply.get("VersionId"),
            etag=reply.get("ETag"),
        )

    def head(self, key: str) -> ObjectInfo | None:
        from botocore import exceptions as bce

        try:
            reply = self.client.head_object(Bucket=self.bucket, Key=key)
        except bce.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise self._error(exc, "look up", key) from None
        except bce.BotoCoreError as exc:
            raise self._error(exc, "look up", key) from None
        return self._info(key, reply)

    def list_keys(self, prefix: str) -> Iterator[ObjectInfo]:
        from botocore import exceptions as bce

        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=str(item["Key"]), size=int(item["Size"]), modified=item.get("LastModified")
                    )
        except (bce.ClientError, bce.BotoCoreError) as exc:
            raise self._error(exc, "list", prefix) from None

    def list_dirs(self, prefix: str) -> list[str]:
        from botocore import exceptions as bce

        names: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for item in page.get("CommonPrefixes", []):
                    names.append(str(item["Prefix"])[len(prefix):].rstrip("/"))
        except (bce.ClientError, bce.BotoCoreError) as exc:
            raise self._error(exc, "list", prefix or None) from None
        return sorted(n for n in names if n)

    def read_small(self, key: str, limit: int = 16 * 1024 * 1024) -> bytes:
        from botocore import exceptions as bce

        reply = self._call("read", key, "get_object", Bucket=self.bucket, Key=key)
        if int(reply.get("ContentLength", 0)) > limit:
            reply["Body"].close()
            raise StoreError(f"{self._where(key)} is larger than {limit} bytes; not a manifest")
        try:
            data: bytes = reply["Body"].read()
        except (bce.BotoCoreError, OSError) as exc:
            raise self._error(exc, "read", key) from None
        return data

    def download(self, key: str, out: BinaryIO, *, progress: Progress = NO_PROGRESS) -> int:
        from botocore import exceptions as bce

        reply = self._call("download", key, "get_object", Bucket=self.bucket, Key=key)
        expected = int(reply.get("ContentLength", -1))
        total = 0
        try:
            for chunk in reply["Body"].iter_chunks(_READ_BLOCK):
                out.write(chunk)
                total += len(chunk)
                progress(len(chunk))
        except (bce.BotoCoreError, bce.ClientError) as exc:
            raise StoreUnavailable(
                f"download of {self._where(key)} broke off after {total} of {expected} bytes "
                f"({exc}); nothing was extracted, run the command again"
            ) from None
        finally:
            reply["Body"].close()
        if expected >= 0 and total != expected:
            raise StoreUnavailable(
                f"download of {self._where(key)} is truncated: {total} of {expected} bytes; "
                "nothing was extracted, run the command again"
            )
        return total

    def download_file(
        self,
        key: str,
        dest: Path,
        *,
        size: int,
        etag: str | None = None,
        progress: Progress = NO_PROGRESS,
    ) -> int:
        """Large objects come down as ``upload_concurrency`` byte ranges in parallel, written in
        place with pwrite; every range is pinned to the same object with If-Match on its ETag,
        so an object replaced mid-download fails instead of mixing two versions."""
        ev = self.evidence
        threshold = max(ev.multipart_threshold_mb * 1024 * 1024, MIN_PART)
        if size < threshold or ev.upload_concurrency == 1:
            return super().download_file(key, dest, size=size, etag=etag, progress=progress)
        from botocore import exceptions as bce

        part = choose_part_size(size, ev.part_size_mb * 1024 * 1024, ev.upload_concurrency)
        starts = list(range(0, size, part))
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:

            def fetch(start: int) -> None:
                end = min(start + part, size) - 1
                extra = {"IfMatch": etag} if etag else {}
                reply = self._call(
                    "download", key, "get_object", Bucket=self.bucket, Key=key,
                    Range=f"bytes={start}-{end}", **extra,
                )
                pos = start
                try:
                    for chunk in reply["Body"].iter_chunks(_READ_BLOCK):
                        if pos + len(chunk) > end + 1:
                            raise StoreError(f"{self._where(key)}: the store sent more than asked")
                        os.pwrite(fd, chunk, pos)  # OSError (a full disk) goes up as it is
                        pos += len(chunk)
                        progress(len(chunk))
                except (bce.BotoCoreError, bce.ClientError) as exc:
                    raise StoreUnavailable(
                        f"download of {self._where(key)} broke off at byte {pos} of {size} ({exc}); "
                        "nothing was extracted, run the command again"
                    ) from None
                finally:
                    reply["Body"].close()
                if pos != end + 1:
                    raise StoreUnavailable(
                        f"download of {self._where(key)} is truncated: range {start}-{end} ended at "
                        f"byte {pos}; nothing was extracted, run the command again"
                    )

            workers = min(ev.upload_concurrency, len(starts))
            _run_all(fetch, starts, workers, "dfir-get")
        finally:
            os.close(fd)
        return size

    def delete(self, key: str) -> None:
        self._call("delete", key, "delete_object", Bucket=self.bucket, Key=key)

    def presign(self, key: str, expires: int) -> str:
        if not 1 <= expires <= MAX_PRESIGN:
            raise UsageError(f"--expires must be 1..{MAX_PRESIGN} seconds (SigV4 allows 7 days)")
        from botocore import exceptions as bce

        try:
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
            )
        except (bce.BotoCoreError, bce.ClientError) as exc:
            raise self._error(exc, "sign a URL for", key) from None
        return url

    def describe(self, key: str) -> str:
        return self._where(key)


def _run_all(task: Callable[[int], object], items: Sequence[int], workers: int, name: str) -> None:
    """Run ``task`` on every item in a pool; on the first failure cancel what has not started
    and re-raise it (a part or range that failed must fail the whole transfer)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        futures: list[Future[object]] = [pool.submit(task, item) for item in items]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for done in finished:
            exc = done.exception()
            if exc is not None:
                for f in futures:
                    f.cancel()
                raise exc


def _content_type(key: str) -> str:
    if key.endswith(".json"):
        return "application/json"
    if key.endswith(".tar.zst"):
        return "application/zstd"
    return "application/octet-stream"
