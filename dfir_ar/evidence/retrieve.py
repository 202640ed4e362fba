"""The incident responder's side of the store: list bundles from their manifest objects (never
downloading a bundle), fetch one (size and SHA-256 checked against what the uploader recorded),
verify every hash and the signature, and only then extract; presigned URLs.

Listing walks the layout ``<prefix>/<agent>/<YYYY>/<MM>/<DD>/`` with delimiter listings and
prunes agents and days outside the filter, so ``--agent`` and ``--since`` cost a few requests,
not a scan of the whole bucket.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from dfir_ar.errors import (
    EvidenceError,
    RefusedInput,
    StoreError,
    UsageError,
    VerificationFailed,
)
from dfir_ar.evidence.spool import ManifestFacts
from dfir_ar.evidence.stores.base import (
    BUNDLE_SUFFIX,
    MANIFEST_SUFFIX,
    NO_PROGRESS,
    EvidenceStore,
    ObjectInfo,
    Progress,
    bundle_key,
    check_agent_id,
    check_bundle_id,
    manifest_key,
    sha256_file,
)
from dfir_ar.ids import id_time

log = logging.getLogger("dfir_ar.evidence.retrieve")

_STATUS_ORDER = {"ok": 0, "partial": 1, "failed": 2}
DEFAULT_MAX_EXTRACT = 4096 * 1024 * 1024
"""`bundles get` extracts at most this many artifact bytes (evidence.max_bundle_mb's default)."""


@dataclass(frozen=True, slots=True)
class BundleEntry:
    """One bundle as its manifest object describes it."""

    bundle_id: str
    agent_id: str
    hostname: str
    created: datetime
    rule_id: str
    alert_id: str
    srcip: str
    status: str
    collectors: tuple[str, ...]
    artifacts: int
    artifact_bytes: int
    signed: bool
    manifest_key: str
    bundle_key: str
    manifest: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    archive_bytes: int | None = None
    """Size of the .tar.zst object when the listing saw it; None: not in the store (or not
    looked up)."""
    problem: str = ""
    """Why this manifest object could not be read (a problem row of `bundles list`); "" if fine."""

    @classmethod
    def from_manifest(cls, data: bytes, prefix: str, fallback_id: str = "") -> BundleEntry:
        """The entry a manifest describes; StoreError (never another exception) when it is not
        a manifest: the manifest object is written by the agent, so it is hostile input."""
        try:
            return cls._from_manifest(data, prefix, fallback_id)
        except (EvidenceError, RefusedInput) as exc:
            raise StoreError(str(exc)) from None
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise StoreError(f"unreadable manifest ({exc})") from None

    @classmethod
    def found_at(cls, data: bytes, prefix: str, key: str) -> BundleEntry:
        """The entry of the manifest object at ``key``, which must be where the uploader puts a
        manifest with this agent id, time and bundle id: an agent writes only under its own
        prefix, so a manifest that names another agent (or place) is refused."""
        entry = cls.from_manifest(data, prefix, _id_from_key(key))
        if entry.manifest_key != key:
            raise StoreError(
                f"manifest says agent {entry.agent_id}, bundle {entry.bundle_id}, which belongs "
                f"at {entry.manifest_key}, not where it was found"
            )
        return entry

    @classmethod
    def unreadable(cls, key: str, prefix: str, problem: str) -> BundleEntry:
        """A problem row for a manifest object that cannot be read: named by its key."""
        rel = key[len(prefix) + 1:] if prefix and key.startswith(prefix + "/") else key
        agent_id = rel.split("/", 1)[0]
        bundle_id = _id_from_key(key)
        try:
            created = datetime.fromtimestamp(id_time(bundle_id), UTC)
        except (ValueError, OverflowError, OSError):
            created = datetime.fromtimestamp(0, UTC)
        return cls(
            bundle_id=bundle_id, agent_id=agent_id, hostname="", created=created, rule_id="",
            alert_id="", srcip="", status="unreadable", collectors=(), artifacts=0,
            artifact_bytes=0, signed=False, manifest_key=key,
            bundle_key=key.removesuffix(MANIFEST_SUFFIX) + BUNDLE_SUFFIX, problem=problem,
        )

    @classmethod
    def _from_manifest(cls, data: bytes, prefix: str, fallback_id: str) -> BundleEntry:
        facts = ManifestFacts.from_json(data, fallback_id=fallback_id)
        raw = facts.raw
        trigger = _dict(raw.get("trigger"))
        agent = _dict(raw.get("agent"))
        collectors = [c for c in raw.get("collectors") or () if isinstance(c, dict)]
        artifacts = [a for a in raw.get("artifacts") or () if isinstance(a, dict)]
        statuses = [str(c.get("status", "failed")) for c in collectors] or ["failed"]
        return cls(
            bundle_id=facts.bundle_id,
            agent_id=facts.agent_id,
            hostname=str(agent.get("hostname") or ""),
            created=facts.created,
            rule_id=facts.rule_id,
            alert_id=facts.alert_id,
            srcip=str(trigger.get("srcip") or ""),
            status=max(statuses, key=lambda s: _STATUS_ORDER.get(s, 2)),
            collectors=tuple(str(c.get("name", "?")) for c in collectors),
            artifacts=len(artifacts),
            artifact_bytes=sum(int(a.get("size") or 0) for a in artifacts),
            signed=bool(raw.get("signed")),
            manifest_key=manifest_key(prefix, facts.agent_id, facts.created, facts.bundle_id),
            bundle_key=bundle_key(prefix, facts.agent_id, facts.created, facts.bundle_id),
            manifest=raw,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id,
            "agent_id": self.agent_id,
            "hostname": self.hostname,
            "created": self.created.isoformat(),
            "rule_id": self.rule_id or None,
            "alert_id": self.alert_id or None,
            "srcip": self.srcip or None,
            "status": self.status,
            "collectors": list(self.collectors),
            "artifacts": self.artifacts,
            "artifact_bytes": self.artifact_bytes,
            "signed": self.signed,
            "archive_bytes": self.archive_bytes,
            "bundle_key": self.bundle_key,
            "manifest_key": self.manifest_key,
            "problem": self.problem or None,
        }


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class Filter:
    agent: str | None = None
    rule: str | None = None
    alert: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def keeps(self, entry: BundleEntry) -> bool:
        if entry.problem:
            # Rule and alert are unknown: shown, since it may be the bundle looked for.
            return not (self.since is not None and entry.created < self.since)
        if self.rule is not None and entry.rule_id != self.rule:
            return False
        if self.alert is not None and entry.alert_id != self.alert:
            return False
        if self.since is not None and entry.created < self.since:
            return False
        return not (self.until is not None and entry.created > self.until)


def _root(store: EvidenceStore) -> str:
    return f"{store.prefix}/" if store.prefix else ""


def _agents(store: EvidenceStore, agent: str | None) -> list[str]:
    """The agent given, or every agent prefix in the store (names that cannot be an agent id,
    put there by something else, are skipped rather than stopping the search)."""
    if agent:
        return [check_agent_id(agent)]
    found = []
    for name in store.list_dirs(_root(store)):
        try:
            found.append(check_agent_id(name))
        except RefusedInput:
            continue
    return found


def _day_ranges(flt: Filter) -> tuple[date, date]:
    low = flt.since.astimezone(UTC).date() if flt.since else date.min
    high = flt.until.astimezone(UTC).date() if flt.until else date.max
    return low, high


def _walk_days(store: EvidenceStore, agent_root: str, low: date, high: date) -> Iterator[str]:
    """Day prefixes ``.../YYYY/MM/DD/`` under an agent that can hold bundles in [low, high]."""
    for year in store.list_dirs(agent_root):
        if not (len(year) == 4 and year.isdigit()) or not low.year <= int(year) <= high.year:
            continue
        for month in store.list_dirs(f"{agent_root}{year}/"):
            if not (len(month) == 2 and month.isdigit()):
                continue
            ym = (int(year), int(month))
            if not (low.year, low.month) <= ym <= (high.year, high.month):
                continue
            for day in store.list_dirs(f"{agent_root}{year}/{month}/"):
                if not (len(day) == 2 and day.isdigit()):
                    continue
                try:
                    d = date(int(year), int(month), int(day))
                except ValueError:
                    continue
                if low <= d <= high:
                    yield f"{agent_root}{year}/{month}/{day}/"


def list_bundles(store: EvidenceStore, flt: Filter, *, workers: int = 8) -> list[BundleEntry]:
    """Bundles matching ``flt``, oldest first, read from the manifest objects only.

    A manifest that cannot be parsed, or that names another agent than the prefix it is under,
    is a problem row (status ``unreadable``, ``problem`` says why) and a warning naming its
    key: not skipped in silence (it may be the one the responder is looking for), and not
    fatal (one agent must not be able to break the listing of every other).
    """
    root = _root(store)
    agents = _agents(store, flt.agent)
    low, high = _day_ranges(flt)
    keys: list[str] = []
    archive_sizes: dict[str, int] = {}
    for agent in agents:
        for day_prefix in _walk_days(store, f"{root}{agent}/", low, high):
            for obj in store.list_keys(day_prefix):
                if obj.key.endswith(MANIFEST_SUFFIX):
                    keys.append(obj.key)
                elif obj.key.endswith(BUNDLE_SUFFIX):
                    archive_sizes[obj.key] = obj.size

    def read(key: str) -> BundleEntry:
        data = store.read_small(key)
        try:
            return BundleEntry.found_at(data, store.prefix, key)
        except StoreError as exc:
            log.warning("%s: %s", store.describe(key), exc)
            return BundleEntry.unreadable(key, store.prefix, str(exc))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        entries = [
            replace(e, archive_bytes=archive_sizes.get(e.bundle_key)) for e in pool.map(read, keys)
        ]
    return sorted((e for e in entries if flt.keeps(e)), key=lambda e: (e.created, e.bundle_id))


def _id_from_key(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(MANIFEST_SUFFIX)


def find_bundle(store: EvidenceStore, bundle_id: str, *, agent: str | None = None) -> BundleEntry:
    """Locate a bundle by id: its id encodes when collection started, so that day and the next
    (a collection can run past midnight before it is sealed) are looked at first, per agent."""
    check_bundle_id(bundle_id)
    started = datetime.fromtimestamp(id_time(bundle_id), UTC)
    days = [started, started + timedelta(days=1)]
    root = _root(store)
    agents = _agents(store, agent)
    for agent_id in agents:
        for day in days:
            key = manifest_key(store.prefix, agent_id, day, bundle_id)
            if store.head(key) is not None:
                return _found(store, key)
    # Not on the days its id points at (the agent's clock was off when it sealed, or the
    # manifest's creation time was set otherwise): one full listing per agent finds it anyway.
    wanted = f"/{bundle_id}{MANIFEST_SUFFIX}"
    for agent_id in agents:
        for obj in store.list_keys(f"{root}{agent_id}/"):
            if obj.key.endswith(wanted):
                return _found(store, obj.key)
    where = f"agent {agent}" if agent else f"{len(agents)} agent(s)"
    raise StoreError(
        f"bundle {bundle_id} is not in {store.url} (looked under {where}); "
        "`dfir-ar bundles list` shows what is there"
    )


def _found(store: EvidenceStore, key: str) -> BundleEntry:
    try:
        return BundleEntry.found_at(store.read_small(key), store.prefix, key)
    except StoreError as exc:
        raise StoreError(f"{store.describe(key)}: {exc}") from None


def _disk_error(action: str, where: Path, exc: OSError) -> EvidenceError:
    if exc.errno == errno.ENOSPC:
        return EvidenceError(
            f"no space left on the device holding {where} while trying to {action}; "
            "nothing was extracted; free space or pass -o DIR on another disk"
        )
    return EvidenceError(f"cannot {action} in {where}: {exc.strerror or exc}")


def download_bundle(
    store: EvidenceStore, entry: BundleEntry, dest: Path, *, progress: Progress = NO_PROGRESS
) -> tuple[ObjectInfo, list[str]]:
    """Download the bundle object to ``dest`` and compare it with the size and SHA-256 the
    uploader recorded. Returns the object info and the problems found (empty when it matches);
    a broken-off transfer raises StoreError."""
    info = store.head(entry.bundle_key)
    if info is None:
        raise StoreError(
            f"{store.describe(entry.bundle_key)} is missing although its manifest is there "
            "(upload interrupted, or deleted from the store)"
        )
    try:
        written = store.download_file(
            entry.bundle_key, dest, size=info.size, etag=info.etag, progress=progress
        )
        on_disk = dest.stat().st_size
        digest = sha256_file(dest)
    except OSError as exc:
        raise _disk_error("download the bundle", dest.parent, exc) from None
    problems = []
    if written != info.size or on_disk != info.size:
        raise StoreError(
            f"download of {store.describe(entry.bundle_key)} is truncated: {on_disk} of "
            f"{info.size} bytes; nothing was extracted, run the command again"
        )
    if info.meta is not None and digest != info.meta.sha256:
        problems.append(
            f"the bundle's SHA-256 {digest} is not the {info.meta.sha256} "
            "recorded when it was uploaded (changed in the store)"
        )
    return info, problems


@dataclass(frozen=True, slots=True)
class Fetched:
    entry: BundleEntry
    archive: Path
    extracted: Path | None
    report: Any
    """dfir_ar.evidence.verify.VerifyReport"""


def fetch_and_verify(
    store: EvidenceStore,
    bundle_id: str,
    out_dir: Path,
    *,
    public_key: Path | None,
    allow_unsigned: bool = False,
    extract: bool = True,
    agent: str | None = None,
    progress_factory: Callable[[int], Progress] | None = None,
    max_extract: int = DEFAULT_MAX_EXTRACT,
) -> Fetched:
    """``bundles get``: download to a temporary name, check size and SHA-256, verify every hash
    and the signature, then (only then) move the archive to ``out_dir/<id>.tar.zst`` and extract
    into ``out_dir/<id>/``. On any failure nothing is left that looks like a good bundle.

    The signed manifest must name the agent whose prefix the bundle was found under, and the
    returned entry is built from that verified manifest (the manifest object beside the bundle
    is not signed). Nothing is extracted when the artifacts add up to more than
    ``max_extract`` bytes or more than the free space in ``out_dir``."""
    from dfir_ar.evidence.verify import verify_bundle

    entry = find_bundle(store, bundle_id, agent=agent)
    final_archive = out_dir / f"{entry.bundle_id}{BUNDLE_SUFFIX}"
    final_dir = out_dir / entry.bundle_id
    for existing in (final_dir, final_archive) if extract else (final_archive,):
        if existing.exists():
            raise UsageError(f"{existing} already exists; remove it or pass -o another directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{entry.bundle_id}.", dir=out_dir))
    except OSError as exc:
        raise _disk_error("create a work directory", out_dir, exc) from None
    try:
        tmp = work / f"{entry.bundle_id}{BUNDLE_SUFFIX}"
        info = store.head(entry.bundle_key)
        progress = progress_factory(info.size if info else 0) if progress_factory else NO_PROGRESS
        _, problems = download_bundle(store, entry, tmp, progress=progress)
        report = verify_bundle(tmp, public_key, allow_unsigned=allow_unsigned)
        problems.extend(report.problems)
        manifest = report.manifest
        if manifest is not None:
            problems.extend(_binding_problems(entry, manifest.bundle_id, manifest.agent.id))
        if problems or manifest is None:
            raise VerificationFailed(
                f"bundle {entry.bundle_id} from {store.describe(entry.bundle_key)} FAILED "
                "verification; nothing was extracted:\n  - " + "\n  - ".join(problems)
            )
        verified = replace(
            BundleEntry.from_manifest(manifest.canonical_bytes(), store.prefix),
            manifest_key=entry.manifest_key, bundle_key=entry.bundle_key,
            archive_bytes=entry.archive_bytes,
        )
        extracted: Path | None = None
        if extract:
            _check_room(manifest.artifacts, out_dir, max_extract, entry.bundle_id)
            target = work / "extract"
            try:
                _extract(tmp, target)
            except (tarfile.TarError, ValueError, EOFError) as exc:
                raise VerificationFailed(
                    f"bundle {entry.bundle_id}: extraction refused ({exc}); nothing was "
                    "extracted"
                ) from None
            target.rename(final_dir)
            extracted = final_dir
        tmp.rename(final_archive)
        return Fetched(verified, final_archive, extracted, report)
    except OSError as exc:
        raise _disk_error("write the bundle", out_dir, exc) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _binding_problems(entry: BundleEntry, bundle_id: str, agent_id: str) -> list[str]:
    """What ties the signed manifest to where the bundle was found: its id, and its agent (the
    prefix, which per-agent store policies let only that agent write)."""
    problems = []
    if bundle_id != entry.bundle_id:
        problems.append(f"the archive holds bundle {bundle_id}, not {entry.bundle_id}")
    if agent_id != entry.agent_id:
        problems.append(
            f"the signed manifest says agent {agent_id!r}, but the bundle was found under agent "
            f"{entry.agent_id}'s prefix (published by another agent?)"
        )
    return problems


def _check_room(artifacts: Any, out_dir: Path, limit: int, bundle_id: str) -> None:
    """Refuse to extract more than ``limit`` bytes, or more than the free space in ``out_dir``:
    a small archive can expand to gigabytes (verification checked the sizes, not their sum)."""
    total = sum(int(a.size) for a in artifacts)
    if total > limit:
        raise VerificationFailed(
            f"bundle {bundle_id}: its artifacts add up to {total} bytes, over the extraction "
            f"limit of {limit} bytes (evidence.max_bundle_mb); nothing was extracted "
            "(--no-extract keeps the archive; raise max_bundle_mb if this bundle is expected)"
        )
    try:
        st = os.statvfs(out_dir)
    except OSError as exc:
        raise _disk_error("check the free space", out_dir, exc) from None
    free = st.f_bavail * st.f_frsize
    if total > free:
        raise EvidenceError(
            f"bundle {bundle_id}: its artifacts need {total} bytes but {out_dir} has {free} "
            "free; nothing was extracted; free space or pass -o DIR on another disk"
        )


def _extract(archive: Path, target: Path) -> None:
    """Extract a verified archive. Streams the first zstd frame (the trailer after it is a
    skippable frame the decompressor never reaches) and uses tarfile's ``data`` filter, so even
    a bundle that passed verification cannot write outside ``target`` or create devices."""
    import zstandard

    target.mkdir(parents=True)
    with archive.open("rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        with contextlib.closing(reader), tarfile.open(fileobj=reader, mode="r|") as tar:
            tar.extractall(target, filter="data")


def fetch_for_verify(
    store: EvidenceStore,
    bundle_id: str,
    work: Path,
    *,
    agent: str | None = None,
    progress_factory: Callable[[int], Progress] | None = None,
) -> tuple[Path, list[str]]:
    """``bundles verify ID``: download into ``work`` and return the file and any mismatch with
    the upload record; the caller runs verify_bundle on it."""
    entry = find_bundle(store, bundle_id, agent=agent)
    dest = work / f"{entry.bundle_id}{BUNDLE_SUFFIX}"
    info = store.head(entry.bundle_key)
    progress = progress_factory(info.size if info else 0) if progress_factory else NO_PROGRESS
    _, problems = download_bundle(store, entry, dest, progress=progress)
    # The manifest verify_bundle will check (and the signature covers) is the archive's first
    # member; it must name the agent whose prefix the bundle is under.
    inner = _peek_manifest(dest)
    if inner is not None:
        agent = inner.get("agent")
        problems.extend(_binding_problems(
            entry, str(inner.get("bundle_id")),
            str(agent.get("id")) if isinstance(agent, dict) else "",
        ))
    return dest, problems


def _peek_manifest(archive: Path) -> dict[str, Any] | None:
    """The archive's first member parsed as JSON, or None when it cannot be read (then
    verify_bundle reports why). Bounded: it reads one member of at most MAX_MANIFEST bytes."""
    import zstandard

    from dfir_ar.evidence.bundle import MANIFEST_NAME
    from dfir_ar.evidence.verify import MAX_MANIFEST

    try:
        with archive.open("rb") as fh:
            reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=False)
            with contextlib.closing(reader), tarfile.open(fileobj=reader, mode="r|") as tar:
                member = tar.next()
                if member is None or member.name != MANIFEST_NAME or not member.isreg():
                    return None
                if member.size > MAX_MANIFEST:
                    return None
                data = tar.extractfile(member)
                raw = json.loads(data.read()) if data is not None else None
    except (OSError, ValueError, EOFError, tarfile.TarError, zstandard.ZstdError):
        return None
    return raw if isinstance(raw, dict) else None


def presign_bundle(
    store: EvidenceStore, bundle_id: str, expires: int, *, agent: str | None = None
) -> tuple[BundleEntry, str]:
    entry = find_bundle(store, bundle_id, agent=agent)
    return entry, store.presign(entry.bundle_key, expires)
