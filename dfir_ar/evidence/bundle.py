"""BundleWriter: the only way evidence reaches disk. Hashes every artifact while it is written,
enforces the byte cap and the free-disk floor, and seals ``<bundle_id>.tar.zst`` atomically.

Lifecycle on disk (``<spool>`` is ``config.spool_dir``)::

    <spool>/staging/<id>/state.json           what is known so far (for crash recovery)
    <spool>/staging/<id>/artifacts/<c>/<rel>  artifacts as collectors write them
    <spool>/staging/<id>/manifest.json(.sig)  written once collection is over (seal phase 1)
    <spool>/ready/<id>.tar.zst                temp name + rename (phase 2)
    <spool>/ready/<id>.manifest.json          temp name + rename, LAST (phase 3): "ready"
    staging dir removed                       (phase 4)

A crash at any point leaves either a staging dir (``recover_staging`` seals it, as failed if
collection had not finished) or a complete bundle. Never a bundle without its manifest.

Archive format: one zstd frame (content checksum on) holding a tar stream whose members are
``manifest.json``, ``manifest.sig`` (when signed), then ``artifacts/<collector>/<relpath>``;
then one zstd *skippable* frame (magic 0x184D2A50, 32 bytes) holding the SHA-256 of every byte
of the data frame before it. Why the trailer: zstd's own checksum covers the decompressed
content only, and some bits of an encoded block (padding, table choices) can flip without
changing the output; the trailer makes a one-byte flip anywhere in the file fail verification.
``zstd -d``, ``tar --zstd`` and python-zstandard skip skippable frames, so the file stays a
plain .tar.zst for every other tool.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import struct
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dfir_ar import ids
from dfir_ar.collector import ByteCapReached, Outcome, Status
from dfir_ar.errors import EvidenceError, InvalidArgument
from dfir_ar.evidence.manifest import (
    AgentInfo,
    ArtifactEntry,
    CollectorRecord,
    Manifest,
    Trigger,
    tool_versions,
    utc_now,
)
from dfir_ar.evidence.private import make_private_dirs, open_private

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dfir_ar.config.models import Config

log = logging.getLogger("dfir_ar.evidence.bundle")

MiB = 1024 * 1024
ZSTD_LEVEL = 3
ZSTD_WINDOW_LOG = 23
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
TRAILER_MAGIC = 0x184D2A50  # first skippable-frame magic (RFC 8878 3.1.2)
TRAILER_SIZE = 8 + 32
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
ARTIFACTS_DIR = "artifacts"
ARCHIVE_SUFFIX = ".tar.zst"
DIGEST_SUFFIX = ".sha256"
"""``<id>.tar.zst.sha256`` in ready/: ``<hex sha256> <size>`` of the archive, written at seal."""
SIDECAR_SUFFIX = ".manifest.json"
DISK_CHECK_EVERY = 4 * MiB
_COPY_CHUNK = 1 * MiB


class DiskFloorReached(ByteCapReached):
    """Free space in the spool fell below evidence.min_free_mb; the collector stops (PARTIAL)."""


@dataclass(frozen=True, slots=True)
class BundleResult:
    bundle_id: str
    path: Path
    manifest_path: Path
    status: Status


def validate_relpath(relpath: str) -> str:
    """A collector's artifact name: relative, no '..', no NUL, no empty parts; returned normalised.

    Collectors may build names from things an attacker influences (process names, file paths),
    so this is checked, never trusted.
    """
    if not isinstance(relpath, str) or not relpath or len(relpath) > 1024:
        raise InvalidArgument(f"artifact path {relpath!r} is empty or too long")
    if "\x00" in relpath or "\\" in relpath:
        raise InvalidArgument(f"artifact path {relpath!r} contains NUL or a backslash")
    if relpath.startswith("/"):
        raise InvalidArgument(f"artifact path {relpath!r} is absolute")
    parts = relpath.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(f"artifact path {relpath!r} has an empty, '.' or '..' component")
    if any(ord(ch) < 0x20 for ch in relpath):
        raise InvalidArgument(f"artifact path {relpath!r} contains control characters")
    return relpath


def _validate_collector_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\x00" in name or len(name) > 128:
        raise InvalidArgument(f"collector name {name!r} cannot name a directory")
    return name


class _ArtifactFile:
    """The ArtifactWriter handed to collectors: write = cap check, hash update, file write."""

    def __init__(self, bundle: BundleWriter, path: str, media_type: str, fh: IO[bytes]) -> None:
        self._bundle = bundle
        self.path = path
        self.media_type = media_type
        self._fh = fh
        self._hash = hashlib.sha256()
        self._size = 0
        self.closed = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        with self._bundle._lock:
            if self.closed:
                raise ByteCapReached(f"artifact {self.path} is closed (bundle sealed)")
            # All or nothing: a record-structured file (pcap, JSONL) stays well-formed at the cap.
            self._bundle._reserve(n)
            done = 0
            try:
                # Unbuffered: the hash covers exactly what reached the file, even on ENOSPC.
                while done < n:
                    done += self._fh.write(view[done:]) or 0
            except OSError as exc:
                self._bundle._written -= n
                self._undo(self._size)
                raise self._bundle._write_failed(self.path, exc) from exc
            self._hash.update(view)
            self._size += n
        return n

    def _undo(self, size: int) -> None:
        """Drop a partly written chunk. Best effort: the archive takes exactly ``size`` bytes
        of the staging file anyway, so a tail that cannot be cut never reaches a bundle."""
        with contextlib.suppress(OSError):
            self._fh.seek(size)
            os.ftruncate(self._fh.fileno(), size)

    def flush(self) -> None:
        """Nothing to do: writes are unbuffered (kept for file-like callers)."""

    def _close(self) -> ArtifactEntry:
        """Called with the bundle lock held."""
        self.closed = True
        self._fh.close()
        return ArtifactEntry(
            path=self.path, size=self._size, sha256=self._hash.hexdigest(),
            media_type=self.media_type,
        )


@dataclass
class _CollectorState:
    name: str
    version: str
    arguments: dict[str, Any]
    started: datetime
    record: CollectorRecord | None = None
    paths: set[str] = field(default_factory=set)


class BundleWriter:
    """One bundle being written; implements ``dfir_ar.collector.ArtifactSink``.

    Call ``begin_collector`` before a collector writes, ``end_collector`` with its Outcome, then
    ``seal``. Thread-safe: collectors may write several artifacts from a thread pool.
    """

    def __init__(
        self,
        spool_dir: Path,
        *,
        trigger: Trigger,
        agent: AgentInfo,
        max_bytes: int,
        min_free_bytes: int = 0,
        signing_key: Ed25519PrivateKey | None = None,
        bundle_id: str | None = None,
    ) -> None:
        self.spool_dir = spool_dir
        self.bundle_id = bundle_id or ids.new_id()
        if not ids.is_id(self.bundle_id):
            raise InvalidArgument(f"bundle id {self.bundle_id!r} is not a dfir-ar id")
        self.trigger = trigger
        self.agent = agent
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.signing_key = signing_key
        self.created = utc_now()
        self.tools = tool_versions()
        self.stop_reason = ""
        """Set when the writer itself stopped a collector (cap, disk floor, seal)."""
        self.cap_reason: str | None = None
        """What the byte cap stands for, when it is not the bundle size (e.g. spool quota)."""
        self._lock = threading.RLock()
        self._written = 0
        self._next_disk_check = 0
        self._artifacts: list[ArtifactEntry] = []
        self._open: list[_ArtifactFile] = []
        self._collectors: list[_CollectorState] = []
        self._current: _CollectorState | None = None
        self._sealed = False
        self.staging_dir = spool_dir / "staging" / self.bundle_id
        self.ready_dir = spool_dir / "ready"
        # Evidence is for root only, whatever the umask (memory dumps hold keys and passwords).
        make_private_dirs(self.staging_dir, exist_ok=False)
        make_private_dirs(self.ready_dir)
        # Held for the writer's life: recover_staging skips a staging dir that is still in use.
        self._lock_fd = os.open(self.staging_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._save_state()

    @classmethod
    def for_config(
        cls,
        config: Config,
        trigger: Trigger,
        *,
        max_bytes: int | None = None,
        agent: AgentInfo | None = None,
    ) -> BundleWriter:
        """A writer in the configured spool, with the configured cap, disk floor and key."""
        from dfir_ar.evidence.signing import load_private_key

        ev = config.evidence
        cap = ev.max_bundle_mb * MiB
        key = load_private_key(ev.signing_key) if ev.signing_key is not None else None
        return cls(
            config.spool_dir,
            trigger=trigger,
            agent=agent or AgentInfo.current(config),
            max_bytes=min(cap, max_bytes) if max_bytes is not None else cap,
            min_free_bytes=ev.min_free_mb * MiB,
            signing_key=key,
        )

    # -- ArtifactSink ---------------------------------------------------------------------------

    @property
    def bytes_remaining(self) -> int:
        with self._lock:
            return max(0, self.max_bytes - self._written)

    @property
    def bytes_written(self) -> int:
        return self._written

    @contextlib.contextmanager
    def artifact(self, relpath: str, media_type: str) -> Iterator[_ArtifactFile]:
        """Open ``artifacts/<collector>/<relpath>``; on exit it is closed, hashed and recorded,
        also when the collector raised (what was written is evidence, and its hash is exact)."""
        rel = validate_relpath(relpath)
        if not media_type or len(media_type) > 255:
            raise InvalidArgument(f"artifact {rel!r}: media type {media_type!r} is not valid")
        with self._lock:
            if self._sealed:
                raise ByteCapReached("bundle already sealed")
            current = self._current
            if current is None:
                raise EvidenceError("BundleWriter.artifact() called outside begin/end_collector")
            if rel in current.paths:
                raise InvalidArgument(f"artifact {rel!r} written twice by {current.name}")
            self._check_disk(force=True)
            current.paths.add(rel)
            inner = f"{ARTIFACTS_DIR}/{current.name}/{rel}"
            target = self.staging_dir / inner
            make_private_dirs(target.parent)
            fh = open_private(target, exclusive=True, buffering=0)  # closed in _close
            art = _ArtifactFile(self, inner, media_type, fh)
            self._open.append(art)
        try:
            yield art
        finally:
            with self._lock:
                if not art.closed:
                    self._record(art)

    def _record(self, art: _ArtifactFile) -> None:
        entry = art._close()
        self._open.remove(art)
        self._artifacts.append(entry)
        self._save_state()

    def _reserve(self, n: int) -> None:
        """Called with the lock held, before ``n`` bytes are written."""
        if self._sealed:
            raise ByteCapReached("bundle sealed (collector abandoned at its deadline)")
        if self._written + n > self.max_bytes:
            reason = self.cap_reason or f"byte cap reached ({self.max_bytes} bytes)"
            self.stop_reason = self.stop_reason or reason
            raise ByteCapReached(reason)
        if self._written + n >= self._next_disk_check:
            self._check_disk(force=True)
        self._written += n

    def _write_failed(self, path: str, exc: OSError) -> Exception:
        """ENOSPC/EDQUOT/EFBIG stop the collector like the disk floor (PARTIAL); other I/O errors
        fail it, naming the artifact."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            reason = f"disk full while writing {path} ({exc.strerror})"
            self.stop_reason = self.stop_reason or reason
            return DiskFloorReached(reason)
        return EvidenceError(f"cannot write {path} in {self.staging_dir}: {exc.strerror or exc}")

    def _check_disk(self, *, force: bool) -> None:
        # statvfs every DISK_CHECK_EVERY bytes, not per write: pcap writes are small and many.
        if self.min_free_bytes <= 0:
            return
        if not force and self._written < self._next_disk_check:
            return
        st = os.statvfs(self.staging_dir)
        free = st.f_bavail * st.f_frsize
        self._next_disk_check = self._written + DISK_CHECK_EVERY
        if free < self.min_free_bytes:
            reason = (
                f"free disk in the spool fell below evidence.min_free_mb "
                f"({free // MiB} MiB free, floor {self.min_free_bytes // MiB} MiB)"
            )
            self.stop_reason = self.stop_reason or reason
            raise DiskFloorReached(reason)

    # -- collectors -----------------------------------------------------------------------------

    def begin_collector(self, name: str, version: str, arguments: dict[str, Any]) -> None:
        with self._lock:
            if self._current is not None:
                raise EvidenceError(f"collector {self._current.name} has not ended")
            state = _CollectorState(
                _validate_collector_name(name), version, _jsonable(arguments), utc_now()
            )
            self._collectors.append(state)
            self._current = state
            self._save_state()

    def end_collector(self, outcome: Outcome, *, error: str = "") -> CollectorRecord:
        """Record how the current collector ended. A stop the writer caused (cap, disk floor)
        turns an OK into PARTIAL, so the manifest never claims a complete capture that was cut."""
        with self._lock:
            state = self._current
            if state is None:
                raise EvidenceError("end_collector() without begin_collector()")
            status, reason = outcome.status, outcome.reason
            if status is Status.OK and self.stop_reason:
                status, reason = Status.PARTIAL, self.stop_reason
            elif status is Status.PARTIAL and not reason:
                reason = self.stop_reason or "stopped early"
            if status is Status.FAILED and not error:
                error, reason = reason or "failed", ""
            state.record = CollectorRecord(
                name=state.name,
                version=state.version,
                arguments=state.arguments,
                started=state.started,
                ended=utc_now(),
                status=status,
                reason=reason if status is not Status.FAILED else "",
                error=error if status is Status.FAILED else "",
                details=_jsonable(dict(outcome.details)),
            )
            self._current = None
            self._save_state()
            return state.record

    def add_tools(self, versions: dict[str, str]) -> None:
        with self._lock:
            self.tools.update(versions)

    # -- seal -----------------------------------------------------------------------------------

    def seal(self) -> BundleResult:
        """Close what is open, write the manifest, build the archive, publish it atomically."""
        with self._lock:
            if self._sealed:
                raise EvidenceError(f"bundle {self.bundle_id} is already sealed")
            self._sealed = True
            # A collector abandoned at its deadline may still hold artifacts open: cut them here.
            # Their hashes cover exactly the bytes written so far (writes take the same lock).
            for art in list(self._open):
                self._record(art)
            if self._current is not None:
                self.end_collector(
                    Outcome(Status.FAILED, "collector never reported how it ended")
                )
            manifest = self.build_manifest()
        return _seal_staging(self.staging_dir, self.ready_dir, manifest, self.signing_key,
                             release=self._release_lock)

    def build_manifest(self) -> Manifest:
        fingerprint = None
        if self.signing_key is not None:
            from dfir_ar.evidence.signing import fingerprint as fp

            fingerprint = fp(self.signing_key.public_key())
        return Manifest(
            bundle_id=self.bundle_id,
            created=self.created,
            agent=self.agent,
            trigger=self.trigger,
            tools=dict(self.tools),
            collectors=tuple(c.record for c in self._collectors if c.record is not None),
            artifacts=tuple(self._artifacts),
            signed=self.signing_key is not None,
            signer=fingerprint,
        )

    def _release_lock(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _save_state(self) -> None:
        """state.json: enough to seal a bundle as failed after a crash (artifacts closed so far)."""
        state = {
            "bundle_id": self.bundle_id,
            "created": self.created.isoformat(),
            "agent": self.agent.model_dump(mode="json"),
            "trigger": self.trigger.model_dump(mode="json"),
            "tools": self.tools,
            "signed": self.signing_key is not None,
            "collectors": [
                {
                    "name": c.name,
                    "version": c.version,
                    "arguments": c.arguments,
                    "started": c.started.isoformat(),
                    "record": c.record.model_dump(mode="json") if c.record else None,
                }
                for c in self._collectors
            ],
            "artifacts": [a.model_dump(mode="json") for a in self._artifacts],
        }
        if not self.staging_dir.is_dir():
            return  # recovered by another process after this one was presumed dead
        _atomic_write(self.staging_dir / "state.json", json.dumps(state).encode())


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    """Collector arguments/details as plain JSON (paths and sets become strings/lists)."""
    result: dict[str, Any] = json.loads(json.dumps(value, default=_default))
    return result


def _default(obj: object) -> Any:
    if isinstance(obj, set | frozenset | tuple):
        return sorted(obj) if isinstance(obj, set | frozenset) else list(obj)
    return str(obj)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open_private(tmp) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_compressor() -> Any:
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, write_checksum=True, threads=-1
    )
    return zstandard.ZstdCompressor(compression_params=params)


def _seal_staging(
    staging: Path,
    ready: Path,
    manifest: Manifest,
    signing_key: Ed25519PrivateKey | None,
    *,
    release: Any = None,
) -> BundleResult:
    manifest_bytes = manifest.canonical_bytes()
    signature = signing_key.sign(manifest_bytes) if signing_key is not None else None
    # Phase 1: the final manifest in staging, so a crash from here on re-seals the same bundle.
    if signature is not None:
        _atomic_write(staging / SIGNATURE_NAME, signature)
    _atomic_write(staging / MANIFEST_NAME, manifest_bytes)
    return _publish(staging, ready, manifest, manifest_bytes, signature, release=release)


def _publish(
    staging: Path,
    ready: Path,
    manifest: Manifest,
    manifest_bytes: bytes,
    signature: bytes | None,
    *,
    release: Any = None,
) -> BundleResult:
    bundle_id = manifest.bundle_id
    archive = ready / f"{bundle_id}{ARCHIVE_SUFFIX}"
    sidecar = ready / f"{bundle_id}{SIDECAR_SUFFIX}"
    tmp = ready / f".{bundle_id}{ARCHIVE_SUFFIX}.tmp"
    mtime = int(manifest.created.timestamp())
    # Phase 2: stream the tar through zstd into a temp file, then rename.
    try:
        with open_private(tmp) as raw:
            hashing = _HashingRaw(raw)
            with (
                new_compressor().stream_writer(hashing, closefd=False) as zw,
                tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                _add_bytes(tar, MANIFEST_NAME, manifest_bytes, mtime)
                if signature is not None:
                    _add_bytes(tar, SIGNATURE_NAME, signature, mtime)
                for entry in manifest.artifacts:
                    info = _tarinfo(entry.path, entry.size, mtime)
                    with open(staging / entry.path, "rb") as src:
                        tar.addfile(info, src)
            hashing.write_trailer(trailer(hashing.digest()))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, archive)
        # The archive's SHA-256, hashed while written: the uploader needs it before the first
        # byte goes out (object metadata) and need not read the bundle back to get it.
        _atomic_write(
            ready / f"{bundle_id}{ARCHIVE_SUFFIX}{DIGEST_SUFFIX}",
            f"{hashing.whole.hexdigest()} {hashing.size}\n".encode(),
        )
        # Phase 3: the sidecar manifest last: its presence means the archive is complete.
        _atomic_write(sidecar, manifest_bytes)
        _fsync_dir(ready)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if release is not None:
            release()  # sealed already: a later recover_staging in this process may finish it
        raise EvidenceError(
            f"cannot seal bundle {bundle_id} into {ready}: {exc.strerror or exc}; "
            f"its staging dir {staging} is kept and sealed on the next start"
        ) from exc
    # Phase 4.
    if release is not None:
        release()
    shutil.rmtree(staging, ignore_errors=True)
    log.info("sealed bundle %s (%s, %d artifacts)", bundle_id, manifest.status.value,
             len(manifest.artifacts))
    return BundleResult(bundle_id, archive, sidecar, manifest.status)


class _HashingRaw(io.RawIOBase):
    """Passes bytes to the file and hashes them once: the compressed frame's SHA-256 for the
    trailer, and from a copy of that state plus the trailer, the whole file's (the digest file
    the uploader uses)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.whole = self._hash
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._hash.update(data)
        self._raw.write(data)
        self.size += len(data)
        return len(data)

    def write_trailer(self, data: bytes) -> None:
        """Bytes after the frame: in the file and the whole-file hash, not the frame hash."""
        self.whole = self._hash.copy()
        self.whole.update(data)
        self._raw.write(data)
        self.size += len(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def trailer(digest: bytes) -> bytes:
    return struct.pack("<II", TRAILER_MAGIC, len(digest)) + digest


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    tar.addfile(_tarinfo(name, len(data), mtime), io.BytesIO(data))


# -- crash recovery -----------------------------------------------------------------------------


def recover_staging(config: Config) -> list[BundleResult]:
    """Seal what a crash left in ``<spool>/staging``: finished bundles as they were, unfinished
    ones as FAILED with the artifacts that had been closed (incomplete ones are dropped and
    named in the manifest). Staging dirs still locked by a live writer are left alone."""
    from dfir_ar.evidence.signing import load_private_key

    key = (load_private_key(config.evidence.signing_key)
           if config.evidence.signing_key is not None else None)
    return recover_spool(config.spool_dir, signing_key=key)


def recover_spool(
    spool_dir: Path, *, signing_key: Ed25519PrivateKey | None = None
) -> list[BundleResult]:
    staging_root = spool_dir / "staging"
    ready = spool_dir / "ready"
    results: list[BundleResult] = []
    if ready.is_dir():
        for tmp in ready.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
    if not staging_root.is_dir():
        return results
    make_private_dirs(ready)
    for staging in sorted(staging_root.iterdir()):
        if not staging.is_dir():
            continue
        lock_fd = _try_lock(staging)
        if lock_fd is None:
            continue  # a live writer owns it
        try:
            result = _recover_one(staging, ready, signing_key, lock_fd)
        except (OSError, ValueError, EvidenceError) as exc:
            log.error("cannot recover staging dir %s: %s; left in place", staging, exc)
            os.close(lock_fd)
            continue
        if result is not None:
            results.append(result)
    return results


def _intact(path: Path, entry: ArtifactEntry) -> bool:
    h = hashlib.sha256()
    left = entry.size
    try:
        with open(path, "rb") as fh:
            while left > 0:
                chunk = fh.read(min(_COPY_CHUNK, left))
                if not chunk:
                    return False
                h.update(chunk)
                left -= len(chunk)
    except OSError:
        return False
    return h.hexdigest() == entry.sha256


def _try_lock(staging: Path) -> int | None:
    try:
        fd = os.open(staging / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _recover_one(
    staging: Path, ready: Path, signing_key: Ed25519PrivateKey | None, lock_fd: int
) -> BundleResult | None:
    def release() -> None:
        with contextlib.suppress(OSError):
            os.close(lock_fd)

    final = staging / MANIFEST_NAME
    if final.is_file():
        manifest_bytes = final.read_bytes()
        manifest = Manifest.from_bytes(manifest_bytes)
        sig_path = staging / SIGNATURE_NAME
        signature = sig_path.read_bytes() if sig_path.is_file() else None
        log.warning("finishing the seal of bundle %s interrupted by a stop", manifest.bundle_id)
        return _publish(staging, ready, manifest, manifest_bytes, signature, release=release)
    state_path = staging / "state.json"
    if not state_path.is_file():
        log.warning("removing staging dir %s: no state (crashed before anything was written)",
                    staging)
        release()
        shutil.rmtree(staging, ignore_errors=True)
        return None
    state = json.loads(state_path.read_bytes())
    listed = [ArtifactEntry.model_validate(a) for a in state["artifacts"]]
    # After a crash the page cache may not have reached the disk: check each closed artifact
    # against its recorded hash (reading back is fine on this rare path) and drop damaged ones.
    artifacts = tuple(a for a in listed if _intact(staging / a.path, a))
    damaged = sorted(a.path for a in listed if a not in artifacts)
    known = {a.path for a in listed}
    dropped = sorted(
        str(p.relative_to(staging))
        for p in (staging / ARTIFACTS_DIR).rglob("*")
        if p.is_file() and str(p.relative_to(staging)) not in known
    ) if (staging / ARTIFACTS_DIR).is_dir() else []
    now = utc_now()
    records: list[CollectorRecord] = []
    for c in state["collectors"]:
        if c.get("record"):
            records.append(CollectorRecord.model_validate(c["record"]))
            continue
        records.append(CollectorRecord(
            name=c["name"], version=c["version"], arguments=c["arguments"],
            started=datetime.fromisoformat(c["started"]), ended=now, status=Status.FAILED,
            error="dfir-ar stopped (crash or kill) before this collector finished; "
                  "artifacts closed before the stop are kept, incomplete ones dropped",
            details={"dropped_incomplete_artifacts": dropped,
                     "dropped_damaged_artifacts": damaged},
        ))
    for i, rec in enumerate(records):
        lost = [p for p in damaged if p.startswith(f"{ARTIFACTS_DIR}/{rec.name}/")]
        if lost and rec.status is Status.OK:
            records[i] = rec.model_copy(update={
                "status": Status.PARTIAL,
                "reason": f"artifacts damaged by a crash before the seal were dropped: "
                          f"{', '.join(lost)}",
            })
    if not records:
        records.append(CollectorRecord(
            name="unknown", version="", started=now, ended=now, status=Status.FAILED,
            error="dfir-ar stopped before any collector started",
        ))
    fingerprint = None
    if signing_key is not None:
        from dfir_ar.evidence.signing import fingerprint as fp

        fingerprint = fp(signing_key.public_key())
    manifest = Manifest(
        bundle_id=state["bundle_id"],
        created=datetime.fromisoformat(state["created"]),
        agent=AgentInfo.model_validate(state["agent"]),
        trigger=Trigger.model_validate(state["trigger"]),
        tools=state.get("tools", {}),
        collectors=tuple(records),
        artifacts=artifacts,
        signed=signing_key is not None,
        signer=fingerprint,
    )
    log.warning("sealing interrupted bundle %s as %s", manifest.bundle_id, manifest.status.value)
    return _seal_staging(staging, ready, manifest, signing_key, release=release)
