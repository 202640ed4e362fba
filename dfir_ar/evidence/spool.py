"""The spool: a durable upload queue on disk, and the Uploader that drains it into the store.

Nothing is lost: a sealed bundle (``<id>.tar.zst`` plus ``<id>.manifest.json``, written last,
in ``<spool_dir>/ready/``) leaves the spool only after the store confirmed its size and SHA-256,
and the manifest object after it. While the store is down the Uploader retries with exponential
back-off and full jitter; a multipart upload killed half-way resumes from the parts recorded in
``<id>.upload.jsonl`` beside the bundle. One uploader per spool at a time (an flock on
``<spool_dir>/upload.lock``, released by the kernel even on kill -9), so ``serve`` and a
one-shot ``wazuh-ar`` never send the same bundle twice at once. A bundle whose manifest cannot
be read is moved to ``<spool_dir>/quarantine/`` with a log line, never deleted.

Spool layout::

    <spool_dir>/ready/<id>.tar.zst          sealed bundle (bundle.py renames it in)
    <spool_dir>/ready/<id>.tar.zst.sha256   its SHA-256 and size, hashed by the seal as it wrote
    <spool_dir>/ready/<id>.manifest.json    its manifest, written last: the "ready" mark
    <spool_dir>/ready/<id>.upload.jsonl     multipart resume log while an upload is under way
    <spool_dir>/ready/<id>.upload-failures  how many drains the store refused it (quarantined at
                                            QUARANTINE_AFTER, once the store took something else)
    <spool_dir>/quarantine/                 what could not be uploaded as is, kept for a human
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dfir_ar.clock import Clock, SystemClock
from dfir_ar.config.models import Config
from dfir_ar.errors import DfirArError, StateError, StoreError
from dfir_ar.evidence.bundle import DIGEST_SUFFIX
from dfir_ar.evidence.private import make_private_dirs, open_private
from dfir_ar.evidence.stores.base import (
    BUNDLE_SUFFIX,
    MANIFEST_SUFFIX,
    EvidenceStore,
    ObjectMeta,
    StoreUnavailable,
    UploadStats,
    bundle_key,
    check_agent_id,
    check_bundle_id,
    manifest_key,
    open_store,
    sha256_file,
)
from dfir_ar.ids import id_time, is_id

log = logging.getLogger("dfir_ar.evidence.spool")

RESUME_SUFFIX = ".upload.jsonl"
FAILURES_SUFFIX = ".upload-failures"
"""``<id>.upload-failures`` in ready/: how many drains the store refused this bundle (a number)."""
QUARANTINE_AFTER = 5
"""Refusals (a StoreError that is not StoreUnavailable) after which a bundle is moved to
quarantine/ instead of being retried forever, holding the uploader in back-off."""
SPOOL_FULL_MARK = "DFIR-AR SPOOL FULL"
"""A fixed phrase in the log line, for a SIEM rule to match."""


class SpoolFull(StateError):
    """The spool is at its quota; a new bundle would fill the disk."""


# -- manifest facts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestFacts:
    """The few manifest fields the store layout, the object metadata and ``bundles list`` use.

    Read from the raw JSON rather than the full pydantic model so an uploader never refuses to
    move a bundle written by a newer (or older) schema version: nothing lost.
    """

    bundle_id: str
    agent_id: str
    created: datetime
    rule_id: str
    alert_id: str
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: bytes, *, fallback_id: str = "") -> ManifestFacts:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise StoreError("manifest is not a JSON object")
        bundle_id = str(raw.get("bundle_id") or raw.get("id") or fallback_id)
        check_bundle_id(bundle_id)
        agent = raw.get("agent")
        agent_id = str(agent.get("id", "")) if isinstance(agent, dict) else ""
        if not agent_id:
            raise StoreError(f"manifest of {bundle_id} has no agent.id")
        check_agent_id(agent_id)
        created = parse_time(raw.get("created")) or datetime.fromtimestamp(id_time(bundle_id), UTC)
        trigger = raw.get("trigger")
        trigger = trigger if isinstance(trigger, dict) else {}
        return cls(
            bundle_id=bundle_id,
            agent_id=agent_id,
            created=created,
            rule_id=_text(trigger.get("rule_id")),
            alert_id=_text(trigger.get("alert_id")),
            raw=raw,
        )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 text or epoch seconds, as an aware UTC datetime (naive input is UTC)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        # 1e300, NaN or a year past 9999 come from a hostile manifest: no time, not a crash.
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except (ValueError, OverflowError):
            return None
    return None


# -- pure policy ------------------------------------------------------------------------------


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential back-off with full jitter (AWS architecture blog): uniform in
    [0, min(cap, base * 2**(attempt-1))], so many agents coming back after an outage spread out
    instead of hammering the store in lock-step."""
    ceiling = min(cap, base * (2 ** max(0, min(attempt - 1, 30))))
    return rng.uniform(0, ceiling)


def spool_usage(spool_dir: Path) -> int:
    """Bytes held under the spool (ready, staging, quarantine)."""
    total = 0
    for dirpath, _dirs, files in os.walk(spool_dir):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def check_spool_quota(config: Config, incoming: int = 0) -> None:
    """Raise SpoolFull (and log an alert-worthy line) if ``incoming`` more bytes would take the
    spool past ``evidence.spool_quota_mb``. Collection calls this before it starts a bundle."""
    quota = config.evidence.spool_quota_mb * 1024 * 1024
    used = spool_usage(config.spool_dir)
    if used + incoming > quota:
        message = (
            f"{SPOOL_FULL_MARK}: {config.spool_dir} holds {used / 2**20:.0f} MiB of "
            f"{config.evidence.spool_quota_mb} MiB (evidence.spool_quota_mb); no new evidence is "
            "collected until the store takes the waiting bundles (check `dfir-ar bundles push` "
            "and the store) or the quota is raised"
        )
        log.critical(message)
        raise SpoolFull(message)


# -- the uploader -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    bundle_id: str
    bundle: Path
    manifest: Path

    @property
    def resume(self) -> Path:
        return self.bundle.with_name(self.bundle_id + RESUME_SUFFIX)

    @property
    def failures(self) -> Path:
        return self.bundle.with_name(self.bundle_id + FAILURES_SUFFIX)

    @property
    def digest(self) -> Path:
        """The archive's SHA-256 and size as the seal hashed them (see bundle.DIGEST_SUFFIX)."""
        return self.bundle.with_name(self.bundle.name + DIGEST_SUFFIX)


@dataclass(frozen=True, slots=True)
class Uploaded:
    bundle_id: str
    bundle_key: str
    size: int
    seconds: float
    stats: UploadStats


def ready_entries(ready_dir: Path) -> list[SpoolEntry]:
    """The sealed bundles waiting in ``ready_dir`` (``<spool_dir>/ready``), oldest first (ids
    sort by time); a manifest is the "ready" mark. StateError if the directory is unreadable."""
    try:
        names = os.listdir(ready_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError(f"cannot read the spool {ready_dir}: {exc.strerror}") from None
    entries = []
    for name in sorted(names):
        if not name.endswith(MANIFEST_SUFFIX):
            continue
        bundle_id = name.removesuffix(MANIFEST_SUFFIX)
        if not is_id(bundle_id):
            continue
        entries.append(
            SpoolEntry(
                bundle_id=bundle_id,
                bundle=ready_dir / (bundle_id + BUNDLE_SUFFIX),
                manifest=ready_dir / name,
            )
        )
    return entries


class Uploader:
    """Seam C: drains ``<spool_dir>/ready/`` into the configured store."""

    def __init__(
        self,
        config: Config,
        *,
        store: EvidenceStore | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        self.config = config
        self.store = store or open_store(config)
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self.progress = progress
        """Called with (bundle id, bytes done, bytes total) while a bundle goes up."""
        self.poll_interval = poll_interval
        self.ready_dir = config.spool_dir / "ready"
        self.quarantine_dir = config.spool_dir / "quarantine"
        self.uploaded: list[Uploaded] = []
        """Every bundle this uploader confirmed, oldest first (the CLI and tests read it)."""
        self._wake = threading.Event()
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._last_quota_log = -1e18
        self._store_took = False
        """The store accepted a write from this uploader (a bundle, or check_store's probe)."""

    # -- the seam ---------------------------------------------------------------------------

    def check_store(self) -> None:
        """A small write (and delete, where allowed) under this agent's prefix, so bad
        credentials or a missing bucket are reported at start, before the first collection."""
        self.store.check(check_agent_id(self.config.global_.agent_id))
        self._store_took = True

    def notify(self) -> None:
        """Wake ``run()`` now (a collection just sealed a bundle)."""
        self._wake.set()

    def pending(self) -> list[SpoolEntry]:
        """Sealed bundles waiting, oldest first (ids sort by time)."""
        return ready_entries(self.ready_dir)

    def drain_once(self) -> int:
        """Upload every ready bundle; returns how many left the spool.

        Raises StoreError after trying them all if any stayed behind (the first error says
        why); they stay in the spool for the next attempt. Returns 0 at once if another
        uploader holds the spool lock.
        """
        with self._spool_lock() as locked:
            if not locked:
                log.debug("another uploader is draining %s", self.ready_dir)
                return 0
            count = 0
            errors: list[StoreError] = []
            refused: list[tuple[SpoolEntry, StoreError]] = []
            for entry in self.pending():
                try:
                    if self._upload(entry):
                        count += 1
                except StoreError as exc:
                    errors.append(exc)
                    log.error("bundle %s stays in the spool: %s", entry.bundle_id, exc)
                    if isinstance(exc, StoreUnavailable):
                        break  # the store is down: the rest would fail the same way
                    refused.append((entry, exc))
            if count:
                self._store_took = True
            # Counted only once the store took something else: bad credentials or a missing
            # bucket refuse every bundle alike, and must not send all evidence to quarantine.
            if refused and self._store_took:
                for entry, refusal in refused:
                    if self._count_refusal(entry, refusal):
                        errors.remove(refusal)
            self._log_quota()
            if errors:
                left = len(self.pending())
                raise type(errors[0])(f"{left} bundle(s) wait in the spool; {errors[0]}")
            return count

    def run(self, stop: threading.Event) -> None:
        """Drain until ``stop`` is set, backing off (exponential, full jitter) while the store
        fails, and polling every ``poll_interval`` seconds (or at ``notify()``) otherwise."""
        attempt = 0
        cap = self.config.evidence.retry_max_seconds
        while not stop.is_set():
            try:
                self.drain_once()
                attempt = 0
                delay = self.poll_interval
            except DfirArError as exc:
                attempt += 1
                delay = backoff_delay(attempt, base=1.0, cap=cap, rng=self.rng)
                log.warning("upload attempt %d failed: %s; next try in %.1fs", attempt, exc, delay)
            except Exception:  # the thread must survive anything one bundle does to it
                attempt += 1
                delay = backoff_delay(attempt, base=1.0, cap=cap, rng=self.rng)
                log.exception("uploader error; next try in %.1fs", delay)
            self._sleep(delay, stop)

    # -- internals ---------------------------------------------------------------------------

    def _sleep(self, delay: float, stop: threading.Event) -> None:
        end = time.monotonic() + delay
        while not stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            if self._wake.wait(min(0.25, left)):
                self._wake.clear()
                return

    @contextlib.contextmanager
    def _spool_lock(self) -> Iterator[bool]:
        try:
            make_private_dirs(self.config.spool_dir)
            fd = os.open(self.config.spool_dir / "upload.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open the spool lock in {self.config.spool_dir}: {exc}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _sha256(self, path: Path, sealed_digest: Path | None = None) -> str:
        """``path``'s SHA-256: from ``sealed_digest`` (the bundle's, written while it was sealed)
        when it matches the size, else hashed (and kept for a retry)."""
        st = path.stat()
        if sealed_digest is not None:
            sealed = _sealed_digest(sealed_digest, st.st_size)
            if sealed is not None:
                return sealed
        cache_key = (str(path), st.st_size, st.st_mtime_ns)
        digest = self._hashes.get(cache_key)
        if digest is None:
            digest = sha256_file(path)
            self._hashes = {cache_key: digest}  # keep one: the bundle being retried
        return digest

    def _count_refusal(self, entry: SpoolEntry, exc: StoreError) -> bool:
        """One more refusal of ``entry``; True when this one moved it to quarantine."""
        try:
            previous = int(entry.failures.read_text("ascii").strip() or 0)
        except (OSError, ValueError):
            previous = 0
        refusals = previous + 1
        if refusals >= QUARANTINE_AFTER:
            self._quarantine(
                entry, f"the store refused it {refusals} times while taking other bundles "
                f"(last: {exc})",
            )
            return True
        try:
            with open_private(entry.failures) as fh:
                fh.write(f"{refusals}\n".encode())
        except OSError as err:
            log.warning("cannot record the refusal of bundle %s: %s", entry.bundle_id, err)
        return False

    def _quarantine(self, entry: SpoolEntry, reason: str) -> None:
        make_private_dirs(self.quarantine_dir)
        for path in (entry.bundle, entry.resume, entry.digest, entry.failures, entry.manifest):
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, self.quarantine_dir / path.name)
        log.error(
            "bundle %s moved to %s: %s (kept for a human; nothing deleted)",
            entry.bundle_id, self.quarantine_dir, reason,
        )

    def _upload(self, entry: SpoolEntry) -> bool:
        try:
            manifest_bytes = entry.manifest.read_bytes()
        except FileNotFoundError:
            return False  # taken by another process between listing and now
        except OSError as exc:
            raise StateError(f"cannot read {entry.manifest}: {exc.strerror}") from None
        try:
            facts = ManifestFacts.from_json(manifest_bytes, fallback_id=entry.bundle_id)
        except DfirArError as exc:
            self._quarantine(entry, f"unreadable manifest: {exc}")
            return False
        if facts.bundle_id != entry.bundle_id:
            self._quarantine(entry, f"manifest names bundle {facts.bundle_id}, file is {entry.bundle_id}")
            return False
        prefix = self.store.prefix
        bkey = bundle_key(prefix, facts.agent_id, facts.created, facts.bundle_id)
        mkey = manifest_key(prefix, facts.agent_id, facts.created, facts.bundle_id)
        start = time.monotonic()
        stats = UploadStats()
        if not entry.bundle.exists():
            # A crash after the bundle was dropped but before its manifest was: finish the job
            # only if the store really has the bundle.
            if self.store.head(bkey) is None:
                self._quarantine(entry, f"manifest without {entry.bundle.name}, and not in the store")
                return False
            size = 0
        else:
            size = entry.bundle.stat().st_size
            hash_start = time.monotonic()
            meta = ObjectMeta(
                agent_id=facts.agent_id,
                bundle_id=facts.bundle_id,
                sha256=self._sha256(entry.bundle, entry.digest),
                rule_id=facts.rule_id,
                alert_id=facts.alert_id,
            )
            stats.hash_seconds = time.monotonic() - hash_start
            if size >= 64 * 1024 * 1024:
                log.info("uploading bundle %s (%.0f MiB) to %s", facts.bundle_id, size / 2**20,
                         self.store.describe(bkey))
            report = self._reporter(entry.bundle_id, size)
            self.store.put_file(
                entry.bundle, bkey, meta, resume_state=entry.resume, progress=report, stats=stats
            )
        manifest_meta = ObjectMeta(
            agent_id=facts.agent_id,
            bundle_id=facts.bundle_id,
            sha256=self._sha256(entry.manifest),
            rule_id=facts.rule_id,
            alert_id=facts.alert_id,
        )
        self.store.put_file(entry.manifest, mkey, manifest_meta)
        # Both confirmed: now, and only now, the local copies go (manifest last, so a crash in
        # between leaves a manifest that the branch above finishes).
        for path in (entry.resume, entry.bundle, entry.digest, entry.failures, entry.manifest):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        seconds = time.monotonic() - start
        self.uploaded.append(Uploaded(facts.bundle_id, bkey, size, seconds, stats))
        log.info(
            "bundle %s stored at %s (%d bytes in %.1fs%s%s)",
            facts.bundle_id,
            self.store.describe(bkey),
            size,
            seconds,
            f", {stats.parts_reused} of {stats.parts_total} parts resumed" if stats.parts_reused else "",
            ", already in the store" if stats.skipped_existing else "",
        )
        return True

    def _reporter(self, bundle_id: str, total: int) -> Callable[[int], None]:
        if self.progress is None:
            return lambda _n: None
        done = 0
        lock = threading.Lock()
        sink = self.progress

        def report(n: int) -> None:
            nonlocal done
            with lock:  # part workers report concurrently; the sink sees one ordered count
                done += n
                sink(bundle_id, done, total)

        return report

    def _log_quota(self) -> None:
        now = self.clock.monotonic()
        if now - self._last_quota_log < 60:
            return
        quota = self.config.evidence.spool_quota_mb * 1024 * 1024
        used = spool_usage(self.config.spool_dir)
        if used > quota * 0.9:
            self._last_quota_log = now
            log.critical(
                "%s: %s holds %.0f MiB of its %d MiB quota; the store is not taking bundles fast "
                "enough",
                SPOOL_FULL_MARK if used >= quota else "DFIR-AR SPOOL NEARLY FULL",
                self.config.spool_dir, used / 2**20, self.config.evidence.spool_quota_mb,
            )


def _sealed_digest(path: Path, size: int) -> str | None:
    """The hex SHA-256 the seal recorded for a bundle of ``size`` bytes, or None (absent, stale,
    malformed: the caller hashes the file itself). A bundle altered after the seal is still caught:
    a single PUT's server checksum must equal it, and `bundles verify` checks every artifact."""
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    parts = text.split()
    if len(parts) != 2 or len(parts[0]) != 64 or parts[1] != str(size):
        return None
    try:
        bytes.fromhex(parts[0])
    except ValueError:
        return None
    return parts[0]

