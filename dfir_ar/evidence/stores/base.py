"""The evidence store interface, the storage layout, and ``open_store(config)``.

One layout for every store, derived from the manifest only (agent id, creation time, bundle id)::

    <prefix>/<agent_id>/<YYYY>/<MM>/<DD>/<bundle_id>.tar.zst
    <prefix>/<agent_id>/<YYYY>/<MM>/<DD>/<bundle_id>.manifest.json

The manifest object sits beside its bundle so responders can list and filter bundles without
downloading any of them, and the agent id is the first path element under the prefix so a store
policy can confine each agent's credentials to ``<prefix>/<agent_id>/*``.

Two stores implement it: ``file://DIR`` (stores/file.py, the embedded default) and
``s3://BUCKET/PREFIX`` (stores/s3.py, the one module that talks to boto3).
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote, urlsplit

from dfir_ar.config.models import Config, EvidenceConfig
from dfir_ar.errors import ConfigError, InvalidArgument, StoreError
from dfir_ar.ids import is_id

BUNDLE_SUFFIX = ".tar.zst"
MANIFEST_SUFFIX = ".manifest.json"
HEALTHCHECK_DIR = "_healthcheck"
"""Under ``<prefix>/<agent_id>/``: where check_store() writes, inside the agent's own prefix."""

# Agent ids become a path element of every key; keep them to a conservative alphabet so a
# hostile or sloppy manifest cannot write outside its agent's prefix.
_AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

class StoreUnavailable(StoreError):
    """The store could not be reached (connection refused, timeout, 5xx); worth retrying."""


Progress = Callable[[int], None]
"""Called with the number of bytes just moved (uploaded or downloaded)."""


def _no_progress(_: int) -> None:
    return None


NO_PROGRESS: Progress = _no_progress


def check_agent_id(value: str) -> str:
    if not _AGENT_ID.match(value) or value in (".", ".."):
        raise InvalidArgument(
            f"agent id {value!r} cannot be a store path element "
            "(letters, digits, '_', '.', '-'; at most 64; not starting with a symbol)"
        )
    return value


def check_bundle_id(value: str) -> str:
    if not is_id(value):
        raise InvalidArgument(
            f"{value!r} is not a bundle id (26 characters, Crockford base32, e.g. "
            "01JD3K7W0Q9X8Y7Z6A5B4C3D2E); `dfir-ar bundles list` shows them"
        )
    return value


def day_prefix(prefix: str, agent_id: str, created: datetime) -> str:
    """``<prefix>/<agent>/<YYYY>/<MM>/<DD>/`` for a creation time (taken in UTC)."""
    day = created.astimezone(UTC)
    parts = [p for p in (prefix.strip("/"), check_agent_id(agent_id)) if p]
    return "/".join([*parts, f"{day:%Y}", f"{day:%m}", f"{day:%d}"]) + "/"


def bundle_key(prefix: str, agent_id: str, created: datetime, bundle_id: str) -> str:
    return day_prefix(prefix, agent_id, created) + check_bundle_id(bundle_id) + BUNDLE_SUFFIX


def manifest_key(prefix: str, agent_id: str, created: datetime, bundle_id: str) -> str:
    return day_prefix(prefix, agent_id, created) + check_bundle_id(bundle_id) + MANIFEST_SUFFIX


def agent_prefix(prefix: str, agent_id: str) -> str:
    parts = [p for p in (prefix.strip("/"), check_agent_id(agent_id)) if p]
    return "/".join(parts) + "/"


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the store records beside the bytes (S3 user metadata; a sidecar in a file store)."""

    agent_id: str
    bundle_id: str
    sha256: str
    """Hex SHA-256 of the whole object."""
    rule_id: str = ""
    alert_id: str = ""

    def as_dict(self) -> dict[str, str]:
        """Values as S3 accepts them in user metadata: percent-encoded ASCII, each at most
        META_VALUE_MAX bytes. The alert and rule ids come from the manifest, i.e. from the
        alert: a newline or non-ASCII byte there made the upload fail forever."""
        return {
            "dfir-agent": meta_value(self.agent_id),
            "dfir-bundle": meta_value(self.bundle_id),
            "dfir-sha256": meta_value(self.sha256),
            "dfir-rule": meta_value(self.rule_id),
            "dfir-alert": meta_value(self.alert_id),
        }

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> ObjectMeta | None:
        if "dfir-sha256" not in data:
            return None
        return cls(
            agent_id=unquote(data.get("dfir-agent", "")),
            bundle_id=unquote(data.get("dfir-bundle", "")),
            sha256=unquote(data["dfir-sha256"]),
            rule_id=unquote(data.get("dfir-rule", "")),
            alert_id=unquote(data.get("dfir-alert", "")),
        )


META_VALUE_MAX = 256
"""Bytes per user-metadata value (AWS allows 2 KB for all of them together)."""


def meta_value(value: str) -> str:
    """``value`` percent-encoded (UTF-8; letters, digits and ``-._~`` stay as they are) and cut
    to META_VALUE_MAX bytes on an escape boundary. Informational only: the manifest object
    holds the full value."""
    encoded = quote(value, safe="")
    if len(encoded) <= META_VALUE_MAX:
        return encoded
    cut = encoded[:META_VALUE_MAX]
    tail = cut.rfind("%", len(cut) - 2)
    return cut[:tail] if tail != -1 else cut


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None
    meta: ObjectMeta | None = None
    lock_mode: str | None = None
    lock_until: datetime | None = None
    version_id: str | None = None
    etag: str | None = None


@dataclass
class UploadStats:
    """What one upload did; tests and the benchmark read it, logs print it."""

    bytes_sent: int = 0
    parts_total: int = 0
    parts_uploaded: int = 0
    parts_reused: int = 0
    skipped_existing: bool = False
    hash_seconds: float = 0.0
    """Time spent on the whole-file SHA-256 before the upload could start (object metadata)."""


class EvidenceStore(ABC):
    """Where sealed bundles end up. Every method raises StoreError with a message saying what to
    fix; none returns before the store has confirmed what it was asked to do."""

    url: str
    """The store as the user configured it, for messages (``s3://bucket/prefix``)."""
    prefix: str
    """Key prefix inside the store ('' for none), without slashes at the ends."""

    @abstractmethod
    def check(self, agent_id: str) -> None:
        """Prove early that this identity can write under its agent prefix (small write, then
        delete where object lock allows); raise StoreError naming the fix."""

    @abstractmethod
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
        """Upload ``path`` to ``key`` and return only after the store confirmed size and SHA-256.

        ``resume_state`` is a small JSON file where a multipart upload records its upload id and
        finished parts, so an upload killed half-way resumes from them.
        """

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and metadata, or None if there is none."""

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursive)."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """The next path elements under ``prefix`` (which ends with '/'), like ``ls``."""

    @abstractmethod
    def read_small(self, key: str, limit: int = 16 * 1024 * 1024) -> bytes:
        """A small object's bytes (manifests); refuses objects larger than ``limit``."""

    @abstractmethod
    def download(self, key: str, out: BinaryIO, *, progress: Progress = NO_PROGRESS) -> int:
        """Stream the object into ``out``; returns the bytes written."""

    def download_file(
        self,
        key: str,
        dest: Path,
        *,
        size: int,
        etag: str | None = None,
        progress: Progress = NO_PROGRESS,
    ) -> int:
        """Download into the file ``dest`` (created or truncated); returns the bytes written.
        Stores that can fetch byte ranges in parallel override this."""
        with dest.open("wb") as fh:
            return self.download(key, fh, progress=progress)

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object (a delete marker where the bucket is versioned)."""

    def presign(self, key: str, expires: int) -> str:
        """A URL that fetches ``key`` without credentials for ``expires`` seconds."""
        from dfir_ar.errors import UsageError

        raise UsageError(f"{self.url}: presigned URLs need an s3:// store")

    def describe(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key.removeprefix(self.prefix).lstrip('/')}"


def sha256_file(path: Path, progress: Progress = NO_PROGRESS) -> str:
    """Hex SHA-256 of a file, read in 8 MiB blocks (hashlib releases the GIL on large updates)."""
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
            progress(len(block))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class StoreLocation:
    scheme: str
    """"file" or "s3"."""
    bucket: str
    """The bucket (s3) or the directory (file)."""
    prefix: str


def parse_store_url(url: str) -> StoreLocation:
    """``file:///DIR`` or ``s3://BUCKET[/PREFIX]``; a clear ConfigError for anything else."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"evidence.store = {url!r}: a file store needs an absolute path, "
                "file:///var/lib/dfir-ar/evidence (three slashes)"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ConfigError(f"evidence.store = {url!r}: the directory must be absolute")
        return StoreLocation("file", path, "")
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
            raise ConfigError(
                f"evidence.store = {url!r}: {bucket!r} is not a valid bucket name "
                "(3-63 lower-case letters, digits, '.', '-')"
            )
        prefix = parts.path.strip("/")
        if ".." in prefix.split("/") or "//" in prefix:
            raise ConfigError(f"evidence.store = {url!r}: the prefix may not contain '..' or '//'")
        return StoreLocation("s3", bucket, prefix)
    raise ConfigError(
        f"evidence.store = {url!r}: use file:///DIR or s3://BUCKET/PREFIX"
    )


def open_store(config: Config | EvidenceConfig) -> EvidenceStore:
    """The store the config names. boto3 is imported only for s3:// stores."""
    evidence = config.evidence if isinstance(config, Config) else config
    location = parse_store_url(evidence.store)
    if location.scheme == "file":
        from dfir_ar.evidence.stores.file import FileStore

        return FileStore(Path(location.bucket), url=evidence.store)
    from dfir_ar.evidence.stores.s3 import S3Store

    return S3Store(location.bucket, location.prefix, evidence, url=evidence.store)


def utc_from_timestamp(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)
