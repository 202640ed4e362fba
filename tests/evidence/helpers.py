"""Helpers shared by evidence and collector tests: make writers, seal and verify, extract."""

from __future__ import annotations

import io
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import zstandard

from dfir_ar.collector import Outcome
from dfir_ar.evidence.bundle import BundleResult, BundleWriter, new_compressor, trailer
from dfir_ar.evidence.manifest import AgentInfo, Trigger
from dfir_ar.evidence.verify import VerifyReport, verify_bundle

WriterFactory = Callable[..., BundleWriter]

AGENT = AgentInfo(id="001", hostname="test-host", addresses=("198.51.100.5",), os="Debian",
                  kernel="Linux test")


def make_writer(spool: Path, collector: str | None = "test", *, max_bytes: int = 1 << 30,
                min_free_bytes: int = 0, signing_key: object | None = None,
                trigger: Trigger | None = None, arguments: dict[str, object] | None = None,
                ) -> BundleWriter:
    writer = BundleWriter(
        spool,
        trigger=trigger or Trigger(srcip="203.0.113.7", order_id="01TESTORDER", rule_id=5712),
        agent=AGENT,
        max_bytes=max_bytes,
        min_free_bytes=min_free_bytes,
        signing_key=signing_key,  # type: ignore[arg-type]
    )
    if collector is not None:
        writer.begin_collector(collector, "1", arguments or {})
    return writer


def seal(writer: BundleWriter, outcome: Outcome) -> tuple[BundleResult, VerifyReport]:
    writer.end_collector(outcome)
    result = writer.seal()
    return result, verify_bundle(result.path)


def read_members(path: Path) -> dict[str, bytes]:
    """Every member of a bundle, in order (small bundles only)."""
    out: dict[str, bytes] = {}
    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                f = tar.extractfile(member)
                assert f is not None
                out[member.name] = f.read()
    return out


def extract_artifact(path: Path, name: str, dest: Path) -> Path:
    """Write one member of a bundle to ``dest`` (streamed, so large captures are fine)."""
    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                if member.name == name:
                    src = tar.extractfile(member)
                    assert src is not None
                    with open(dest, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                    return dest
    raise AssertionError(f"{name} not in {path}")


def repack(path: Path, members: dict[str, bytes], dest: Path | None = None) -> Path:
    """Rebuild an archive from ``members`` with a consistent zstd checksum and trailer: what a
    careful forger does, so only the manifest hashes and the signature can catch it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    frame = new_compressor().compress(buf.getvalue())
    import hashlib

    out = dest or path
    out.write_bytes(frame + trailer(hashlib.sha256(frame).digest()))
    assert struct.unpack("<I", out.read_bytes()[-40:-36])[0] == 0x184D2A50
    return out
