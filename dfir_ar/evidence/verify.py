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
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from dfir_ar.evidence.manifest import ArtifactEntry, Manifest

_READ = 1024 * 1024
MAX_MANIFEST = 64 * 1024 * 1024
MAX_SIGNATURE = 4096


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


class _FrameReader(io.RawIOBase):
    """Decompresses exactly one zstd frame from ``raw``; errors (bad block, checksum mismatch,
    truncation, bytes after the frame) surface as _Corrupt from read()."""

    def __init__(self, raw: io.BufferedReader) -> None:
        import zstandard

        self._raw = raw
        self._hash = hashlib.sha256()
        self._zstd_error = zstandard.ZstdError
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._buf = b""
        self._pos = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        while self._pos >= len(self._buf):
            if self._done:
                return 0
            self._fill()
        n = min(len(view), len(self._buf) - self._pos)
        view[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n

    def _fill(self) -> None:
        chunk = self._raw.read(_READ)
        if not chunk:
            if not self._dobj.eof:
                raise _Corrupt("archive is truncated: the zstd frame does not end")
            self._done = True
            self._buf, self._pos = b"", 0
            return
        try:
            out = self._dobj.decompress(chunk)
        except self._zstd_error as exc:
            raise _Corrupt(f"archive is corrupt: zstd says {exc}") from None
        if self._dobj.eof:
            # python-zstandard checked the frame's content checksum when the frame ended.
            rest = self._dobj.unused_data
            self._hash.update(chunk[: len(chunk) - len(rest)])
            self._check_trailer(rest + self._raw.read(TRAILER_SIZE + 1 - len(rest)))
            self._done = True
        else:
            self._hash.update(chunk)
        self._buf, self._pos = out, 0

    def _check_trailer(self, tail: bytes) -> None:
        if len(tail) < TRAILER_SIZE:
            raise _Corrupt("archive trailer (SHA-256 of the compressed frame) is missing or cut")
        if len(tail) > TRAILER_SIZE:
            raise _Corrupt("archive has bytes after its trailer")
        if tail != trailer(self._hash.digest()):
            raise _Corrupt(
                "archive trailer does not match the SHA-256 of the compressed frame "
                "(the compressed bytes or the trailer were altered)"
            )

    def drain(self) -> None:
        while self.read(_READ):
            pass


def verify_bundle(
    path: Path,
    public_key_path: Path | None = None,
    *,
    allow_unsigned: bool = False,
) -> VerifyReport:
    """Verify ``<id>.tar.zst``. With a key, an unsigned bundle fails unless ``allow_unsigned``."""
    from dfir_ar.evidence import signing

    report = VerifyReport(path=path, ok=False, problems=[], manifest=None)
    public_key = signing.load_public_key(public_key_path) if public_key_path else None
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise EvidenceError(f"cannot open bundle {path}: {exc.strerror or exc}") from exc
    with raw:
        header = raw.read(len(ZSTD_MAGIC))
        raw.seek(0)
        if header != ZSTD_MAGIC:
            report.problems.append(
                f"archive starts with {header.hex() or 'nothing'}, not zstd's magic "
                f"{ZSTD_MAGIC.hex()} (wrong file, or its first bytes were altered)"
            )
        reader = _FrameReader(raw)
        signature: bytes | None = None
        manifest_bytes: bytes | None = None
        try:
            manifest_bytes, signature = _walk(io.BufferedReader(reader, _READ), report)
            reader.drain()
        except _Corrupt as exc:
            report.problems.append(str(exc))
        except (tarfile.TarError, EOFError) as exc:
            report.problems.append(f"archive is corrupt: tar says {exc}")
    _check_signature(report, manifest_bytes, signature, public_key, allow_unsigned)
    _check_name(report, path)
    report.ok = not report.problems
    return report


def _walk(stream: io.BufferedReader, report: VerifyReport) -> tuple[bytes | None, bytes | None]:
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
                if report.manifest.canonical_bytes() != manifest_bytes:
                    report.problems.append("manifest.json is not in canonical form (edited?)")
                for entry in report.manifest.artifacts:
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
    allow_unsigned: bool,
) -> None:
    from dfir_ar.evidence import signing

    manifest = report.manifest
    if manifest is not None and manifest.signed and signature is None:
        report.problems.append("manifest says the bundle is signed but manifest.sig is missing")
    if signature is None:
        report.signature = "absent"
        if public_key is not None and not allow_unsigned and manifest_bytes is not None:
            report.problems.append(
                "bundle is unsigned but a verify key was given (use --allow-unsigned to accept)"
            )
        return
    if manifest is not None and not manifest.signed:
        report.problems.append("manifest.sig present but the manifest says unsigned")
    if public_key is None:
        report.signature = "not checked"
        report.notes.append("signature present but not checked: give --key (or evidence.verify_key)")
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
