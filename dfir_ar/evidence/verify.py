"""Check a bundle without trusting it: stream-decompress, hash every artifact, compare with the
manifest, check the signature, and name every problem found (not just the first).

Coverage of "one flipped byte anywhere fails": the trailer (see dfir_ar.evidence.bundle) holds
the SHA-256 of the whole compressed frame, and is itself checked byte for byte; inside, the
frame's content checksum, each artifact's SHA-256 and the manifest's ed25519 signature catch
edits that re-encode the archive consistently.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from pydantic import ValidationError

from dfir_ar import ids
from dfir_ar.errors import EvidenceError
from dfir_ar.evidence.bundle import (
    ARCHIVE_SUFFIX,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    TRAILER_SIZE,
    ZSTD_MAGIC,
    trailer,
)
from dfir_ar.evidence.manifest import ArtifactEntry, Manifest, canonical_json

_READ = 1024 * 1024
MAX_MANIFEST = 64 * 1024 * 1024
MAX_SIGNATURE = 4096
_AFTER_TAR_LIMIT = 1024 * 1024


@dataclass
class VerifyReport:
    path: Path
    ok: bool
    problems: list[str]
    manifest: Manifest | None
    signature: str = "absent"
    """``valid``, ``invalid``, ``absent`` (unsigned) or ``not checked`` (no key given)."""
    artifacts_checked: int = 0
    bytes_checked: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "path": str(self.path),
            "ok": self.ok,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "signature": self.signature,
            "artifacts_checked": self.artifacts_checked,
            "bytes_checked": self.bytes_checked,
            "bundle_id": m.bundle_id if m else None,
            "status": m.status.value if m else None,
            "manifest": m.model_dump(mode="json") if m else None,
        }


class _Corrupt(Exception):
    pass


def frame_length(raw: BinaryIO, size: int) -> int:
    """Length in bytes of the zstd frame at offset 0, from its block headers alone (RFC 8878).

    Why walk the structure: python-zstandard's bounded-memory reader neither reports where a
    frame ended nor complains about a truncated one, and the unbounded decompressobj lets a
    small hostile archive expand to gigabytes in one call. Raises _Corrupt on a bad structure.
    """
    raw.seek(0)
    head = raw.read(18)
    if len(head) < 6 or head[:4] != ZSTD_MAGIC:
        raise _Corrupt(
            f"archive starts with {head[:4].hex() or 'nothing'}, not zstd's magic "
            f"{ZSTD_MAGIC.hex()} (wrong file? a bundle is <bundle_id>.tar.zst)"
        )
    fhd = head[4]
    if fhd & 0x08:
        raise _Corrupt("zstd frame header has its reserved bit set")
    single = bool(fhd & 0x20)
    did_size = (0, 1, 2, 4)[fhd & 0x03]
    fcs_flag = fhd >> 6
    fcs_size = (1 if single else 0) if fcs_flag == 0 else (2, 4, 8)[fcs_flag - 1]
    offset = 5 + (0 if single else 1) + did_size + fcs_size
    while True:
        raw.seek(offset)
        block = raw.read(3)
        if len(block) < 3:
            raise _Corrupt(f"archive is truncated: zstd block header at offset {offset} is cut")
        value = int.from_bytes(block, "little")
        last, kind, bsize = value & 1, (value >> 1) & 3, value >> 3
        if kind == 3:
            raise _Corrupt(f"zstd block at offset {offset} has the reserved block type")
        offset += 3 + (1 if kind == 1 else bsize)
        if offset > size:
            raise _Corrupt(f"archive is truncated: a zstd block runs past the end ({size} bytes)")
        if last:
            break
    if fhd & 0x04:
        offset += 4  # content checksum
    if offset > size:
        raise _Corrupt("archive is truncated: the zstd content checksum is cut")
    return offset


class _HashingRegion(io.RawIOBase):
    """Exactly ``length`` bytes of ``raw`` from offset 0, hashed as they are read."""

    def __init__(self, raw: BinaryIO, length: int,
                 progress: Callable[[int], None] | None) -> None:
        self._raw = raw
        self.remaining = length
        self.hash = hashlib.sha256()
        self._progress = progress
        self._done = 0
        raw.seek(0)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = min(len(view), self.remaining)
        if n <= 0:
            return 0
        got = self._raw.readinto(view[:n])  # type: ignore[attr-defined]
        if not got:
            return 0
        self.hash.update(view[:got])
        self.remaining -= got
        self._done += got
        if self._progress is not None:
            self._progress(self._done)
        return int(got)


class _Decompressed(io.RawIOBase):
    """Decompressed bytes with bounded memory; zstd errors become _Corrupt."""

    def __init__(self, region: _HashingRegion) -> None:
        import zstandard

        self._error = zstandard.ZstdError
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], region), read_size=_READ, read_across_frames=False, closefd=False
        )

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        try:
            data = self._reader.read(len(view))
        except self._error as exc:
            raise _Corrupt(f"archive is corrupt: zstd says {exc}") from None
        view[: len(data)] = data
        return len(data)

    def drain(self, limit: int) -> None:
        """Read to the end of the frame; a tar stream ends with < 10 KiB of zero padding, so
        more than ``limit`` bytes past it is an oddity (or a decompression bomb): stop."""
        seen = 0
        while chunk := self.read(_READ):
            seen += len(chunk)
            if seen > limit:
                raise _Corrupt(f"archive holds more than {limit} bytes after the end of its tar")


def verify_bundle(
    path: Path,
    public_key_path: Path | None = None,
    *,
    allow_unsigned: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify ``<id>.tar.zst``.

    ``allow_unsigned=False`` (what `bundles verify|get` pass unless --allow-unsigned): an
    unsigned bundle, or one whose signature cannot be checked because no key is given, fails;
    without a signature check anyone who can write to the store can make a bundle that
    verifies. ``True`` accepts both. ``None`` (checks of a bundle this host just sealed):
    integrity only, plus the signature when a key is given.

    ``progress`` is called with the number of archive bytes read so far."""
    from dfir_ar.evidence import signing

    report = VerifyReport(path=path, ok=False, problems=[], manifest=None)
    public_key = signing.load_public_key(public_key_path) if public_key_path else None
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise EvidenceError(f"cannot open bundle {path}: {exc.strerror or exc}") from exc
    with raw:
        signature: bytes | None = None
        manifest_bytes: bytes | None = None
        try:
            manifest_bytes, signature = _read_archive(raw, report, progress)
        except _Corrupt as exc:
            report.problems.append(str(exc))
        except (tarfile.TarError, EOFError) as exc:
            report.problems.append(f"archive is corrupt: tar says {exc}")
        except ValueError as exc:
            # A hostile archive (NaN in the manifest, odd tar headers) is a failed check,
            # never a traceback.
            report.problems.append(f"archive cannot be verified: {exc}")
    _check_signature(report, manifest_bytes, signature, public_key, allow_unsigned)
    _check_name(report, path)
    report.ok = not report.problems
    return report


def _read_archive(raw: BinaryIO, report: VerifyReport,
                  progress: Callable[[int], None] | None) -> tuple[bytes | None, bytes | None]:
    size = os.fstat(raw.fileno()).st_size
    if size < TRAILER_SIZE + 9:
        raise _Corrupt(f"archive is {size} bytes: too short to be a bundle")
    length = frame_length(raw, size)
    raw.seek(length)
    tail = raw.read()
    if len(tail) != TRAILER_SIZE or tail[:8] != trailer(b"\0" * 32)[:8]:
        raise _Corrupt(
            f"archive has {len(tail)} bytes after its zstd frame where a {TRAILER_SIZE}-byte "
            "dfir-ar trailer belongs (extended, cut, or not a dfir-ar bundle)"
        )
    region = _HashingRegion(raw, length, progress)
    stream = _Decompressed(region)
    buffered = io.BufferedReader(stream, _READ)
    result = _walk(buffered, report)
    buffered.read(_READ)  # what the buffer holds past the tar end counts toward the limit
    stream.drain(_AFTER_TAR_LIMIT)  # the content checksum is checked when the frame's last block is decoded
    if region.remaining:
        raise _Corrupt("archive is corrupt: zstd stopped before the end of its frame")
    if tail != trailer(region.hash.digest()):
        raise _Corrupt(
            "archive trailer does not match the SHA-256 of the compressed frame "
            "(the compressed bytes or the trailer were altered)"
        )
    return result


def _walk(stream: io.BufferedIOBase, report: VerifyReport) -> tuple[bytes | None, bytes | None]:
    manifest_bytes: bytes | None = None
    signature: bytes | None = None
    expected: dict[str, ArtifactEntry] = {}
    seen: set[str] = set()
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for index, member in enumerate(tar):
            name = member.name
            if not member.isreg():
                report.problems.append(f"unexpected non-file member {name!r} in the archive")
                continue
            if index == 0:
                if name != MANIFEST_NAME:
                    report.problems.append(
                        f"first member is {name!r}, expected {MANIFEST_NAME}; cannot verify"
                    )
                    return None, None
                if member.size > MAX_MANIFEST:
                    report.problems.append("manifest.json is implausibly large")
                    return None, None
                manifest_bytes = _read_member(tar, member)
                try:
                    report.manifest = Manifest.from_bytes(manifest_bytes)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    report.problems.append(
                        f"manifest.json is not a valid manifest ({where}: {first['msg']})"
                    )
                    return manifest_bytes, None
                # The bytes themselves must be canonical JSON (what the writer signs); compared
                # as JSON, not against a re-dump of the model, so bundles written before a
                # field was added to the schema still verify.
                if canonical_json(json.loads(manifest_bytes)) != manifest_bytes:
                    report.problems.append("manifest.json is not in canonical form (edited?)")
                collectors = {c.name for c in report.manifest.collectors}
                for entry in report.manifest.artifacts:
                    bad = _bad_artifact_path(entry.path, collectors)
                    if bad:
                        report.problems.append(bad)
                        continue
                    if entry.path in expected:
                        report.problems.append(f"manifest lists {entry.path} twice")
                    expected[entry.path] = entry
                continue
            if name == SIGNATURE_NAME and index == 1:
                if member.size > MAX_SIGNATURE:
                    report.problems.append("manifest.sig is implausibly large")
                    continue
                signature = _read_member(tar, member)
                continue
            if name in seen:
                report.problems.append(f"artifact {name} appears twice in the archive")
                continue
            seen.add(name)
            listed = expected.get(name)
            if listed is None:
                report.problems.append(f"extra member {name} is not listed in the manifest")
                continue
            entry = listed
            digest, size = _hash_member(tar, member)
            report.bytes_checked += size
            report.artifacts_checked += 1
            if size != entry.size:
                report.problems.append(
                    f"artifact {name}: size {size} but the manifest says {entry.size}"
                )
            if digest != entry.sha256:
                report.problems.append(
                    f"artifact {name}: SHA-256 {digest} but the manifest says {entry.sha256}"
                )
    if manifest_bytes is None:
        report.problems.append("archive is empty: no manifest.json")
    for name in sorted(set(expected) - seen):
        report.problems.append(f"artifact {name} is listed in the manifest but missing")
    return manifest_bytes, signature


def _bad_artifact_path(path: str, collectors: set[str]) -> str:
    """Why a manifest's artifact path is refused, or "" when it is
    ``artifacts/<collector>/<relpath>`` as BundleWriter writes it. A path is where `bundles get`
    extracts to, and the manifest may be hostile (signed with a fleet key, or not at all)."""
    from dfir_ar.errors import InvalidArgument
    from dfir_ar.evidence.bundle import ARTIFACTS_DIR, validate_relpath

    try:
        validate_relpath(path)
    except InvalidArgument as exc:
        return f"manifest lists an artifact path that is refused: {exc}"
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != ARTIFACTS_DIR or parts[1] not in collectors:
        return (
            f"manifest lists artifact {path!r} outside {ARTIFACTS_DIR}/<collector>/ "
            "(of a collector the manifest names)"
        )
    return ""


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    if fh is None:
        raise _Corrupt(f"cannot read member {member.name}")
    data = fh.read()
    if len(data) != member.size:
        raise _Corrupt(f"member {member.name} is truncated")
    return data


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[str, int]:
    fh = tar.extractfile(member)
    if fh is None:
        raise _Corrupt(f"cannot read member {member.name}")
    h = hashlib.sha256()
    size = 0
    while chunk := fh.read(_READ):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _check_signature(
    report: VerifyReport,
    manifest_bytes: bytes | None,
    signature: bytes | None,
    public_key: Any,
    allow_unsigned: bool | None,
) -> None:
    from dfir_ar.evidence import signing

    manifest = report.manifest
    if manifest is not None and manifest.signed and signature is None:
        report.problems.append("manifest says the bundle is signed but manifest.sig is missing")
    # None: the in-process check of a bundle this host just wrote (integrity; the signature
    # only when a key is given). A bool: a bundle of unknown origin (the CLI always passes one).
    required = allow_unsigned is False or (allow_unsigned is None and public_key is not None)
    if signature is None:
        report.signature = "absent"
        if required and manifest_bytes is not None:
            report.problems.append(
                "bundle is unsigned but a verify key was given (use --allow-unsigned to accept)"
                if public_key is not None else
                "bundle is unsigned, and no verify key was given: anyone who can write to the "
                "store could have made it (give --key or evidence.verify_key; "
                "--allow-unsigned accepts it)"
            )
        return
    if manifest is not None and not manifest.signed:
        report.problems.append("manifest.sig present but the manifest says unsigned")
    if public_key is None:
        report.signature = "not checked"
        if not required:
            report.notes.append(
                "signature present but not checked: give --key (or evidence.verify_key)"
            )
        else:
            report.problems.append(
                "signature not checked: no verify key was given (give --key or "
                "evidence.verify_key; --allow-unsigned accepts the bundle unchecked)"
            )
        return
    if manifest_bytes is None:
        report.signature = "invalid"
        return
    if signing.verify(public_key, signature, manifest_bytes):
        report.signature = "valid"
        return
    report.signature = "invalid"
    given = signing.fingerprint(public_key)
    if manifest is not None and manifest.signer and manifest.signer != given:
        report.problems.append(
            f"signature does not verify: bundle was signed by key {manifest.signer[:16]}..., "
            f"the key given is {given[:16]}..."
        )
    else:
        report.problems.append("signature does not verify over manifest.json (tampered)")


def _check_name(report: VerifyReport, path: Path) -> None:
    name = path.name
    if report.manifest is None or not name.endswith(ARCHIVE_SUFFIX):
        return
    stem = name[: -len(ARCHIVE_SUFFIX)]
    if ids.is_id(stem) and stem != report.manifest.bundle_id:
        report.problems.append(
            f"file is named {stem} but holds bundle {report.manifest.bundle_id} (swapped?)"
        )
