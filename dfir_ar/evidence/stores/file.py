"""``file://DIR``: the embedded default store, a directory with the same layout as S3.

Writes go to a temporary name in the target directory, are hashed while copied, fsynced, checked
against the expected size and SHA-256, then renamed into place, so a reader never sees half a
bundle. Object metadata lives in a hidden sidecar ``.<name>.meta.json`` (listing skips dot files).
Stored files are made read-only (0440): not WORM against root, but no accidental overwrite;
an existing object is never replaced by different bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dfir_ar.errors import StoreError
from dfir_ar.evidence.stores.base import (
    HEALTHCHECK_DIR,
    NO_PROGRESS,
    EvidenceStore,
    ObjectInfo,
    ObjectMeta,
    Progress,
    UploadStats,
    agent_prefix,
    utc_from_timestamp,
)

_BLOCK = 1 << 20


def _os_error(action: str, path: Path, exc: OSError) -> StoreError:
    if exc.errno == errno.ENOSPC:
        fix = "the disk is full; free space or point evidence.store at a larger disk"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "no permission; run as the dfir-ar user or fix the directory's owner/mode"
    else:
        fix = exc.strerror or str(exc)
    return StoreError(f"file store: cannot {action} {path}: {fix}")


class FileStore(EvidenceStore):
    def __init__(self, root: Path, *, url: str | None = None) -> None:
        self.root = root
        self.url = url or f"file://{root}"
        self.prefix = ""

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]):
            raise StoreError(f"file store: refusing key {key!r} (empty, absolute or '..')")
        return self.root.joinpath(*[p for p in parts if p])

    @staticmethod
    def _meta_path(path: Path) -> Path:
        return path.with_name(f".{path.name}.meta.json")

    def check(self, agent_id: str) -> None:
        probe_dir = self.root / agent_prefix("", agent_id) / HEALTHCHECK_DIR
        probe = probe_dir / f"probe-{os.getpid()}"
        try:
            probe_dir.mkdir(parents=True, exist_ok=True)
            with probe.open("wb") as fh:
                fh.write(b"dfir-ar store check\n")
                fh.flush()
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError as exc:
            raise _os_error("write a test file in", probe_dir, exc) from None

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
        dest = self._path(key)
        existing = self.head(key)
        if existing is not None:
            if existing.meta is not None and existing.meta.sha256 == meta.sha256:
                if stats is not None:
                    stats.skipped_existing = True
                return existing
            raise StoreError(
                f"file store: {dest} already exists with different content; evidence is never "
                "overwritten (move the old file away if it is known bad)"
            )
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        digest = hashlib.sha256()
        size = 0
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as src, tmp.open("wb") as out:
                while block := src.read(_BLOCK):
                    digest.update(block)
                    out.write(block)
                    size += len(block)
                    progress(len(block))
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != meta.sha256:
                raise StoreError(
                    f"file store: {path} changed while it was copied (SHA-256 "
                    f"{digest.hexdigest()} != {meta.sha256}); it stays in the spool"
                )
            if tmp.stat().st_size != size:
                raise StoreError(f"file store: {tmp} has the wrong size after the copy")
            meta_tmp = tmp.with_name(tmp.name + ".meta")
            meta_tmp.write_text(json.dumps(meta.as_dict(), sort_keys=True))
            os.chmod(tmp, 0o440)
            os.replace(meta_tmp, self._meta_path(dest))
            os.replace(tmp, dest)
            dir_fd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise _os_error("write", dest, exc) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if stats is not None:
            stats.bytes_sent += size
        info = self.head(key)
        if info is None or info.size != size:
            raise StoreError(f"file store: {dest} is not there after the rename")
        return info

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error("stat", path, exc) from None
        meta: ObjectMeta | None = None
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads(self._meta_path(path).read_text())
            if isinstance(raw, dict):
                meta = ObjectMeta.from_dict({str(k): str(v) for k, v in raw.items()})
        return ObjectInfo(key=key, size=st.st_size, modified=utc_from_timestamp(st.st_mtime), meta=meta)

    def list_keys(self, prefix: str) -> Iterator[ObjectInfo]:
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(base_key + "/x").parent if base_key else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = full.stat()
                    yield ObjectInfo(key=key, size=st.st_size, modified=utc_from_timestamp(st.st_mtime))

    def list_dirs(self, prefix: str) -> list[str]:
        base = self._path(prefix + "x").parent if prefix else self.root
        try:
            return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _os_error("list", base, exc) from None

    def read_small(self, key: str, limit: int = 16 * 1024 * 1024) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as fh:
                data = fh.read(limit + 1)
        except FileNotFoundError:
            raise StoreError(f"file store: {path} does not exist") from None
        except OSError as exc:
            raise _os_error("read", path, exc) from None
        if len(data) > limit:
            raise StoreError(f"file store: {path} is larger than {limit} bytes; not a manifest")
        return data

    def download(self, key: str, out: BinaryIO, *, progress: Progress = NO_PROGRESS) -> int:
        path = self._path(key)
        total = 0
        try:
            src = path.open("rb")
        except FileNotFoundError:
            raise StoreError(f"file store: {path} does not exist") from None
        except OSError as exc:
            raise _os_error("read", path, exc) from None
        with src:
            while True:
                try:
                    block = src.read(_BLOCK)
                except OSError as exc:
                    raise _os_error("read", path, exc) from None
                if not block:
                    return total
                # A failing write is the caller's disk (OSError goes up as it is).
                out.write(block)
                total += len(block)
                progress(len(block))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            self._meta_path(path).unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error("delete", path, exc) from None

    def presign(self, key: str, expires: int) -> str:
        from dfir_ar.errors import UsageError

        raise UsageError(
            f"{self.url} is a file store: there is no URL to sign; the bundle is at "
            f"{self._path(key)} (serve it yourself, or configure an s3:// store)"
        )

    def describe(self, key: str) -> str:
        return str(self._path(key))

