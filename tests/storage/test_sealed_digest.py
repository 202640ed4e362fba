"""The seal records the archive's SHA-256 (hashed while written) beside it, so the uploader need
not read a large bundle back before its first byte goes out; a stale digest file is ignored."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dfir_ar.evidence.spool import Uploader
from dfir_ar.evidence.stores.base import BUNDLE_SUFFIX

from .conftest import make_bundle, make_config


def test_seal_writes_the_archives_digest(tmp_path: Path) -> None:
    result = make_bundle(tmp_path / "spool", size=300_000)
    digest_file = result.path.with_name(result.path.name + ".sha256")
    hex_digest, size = digest_file.read_text().split()
    assert hex_digest == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert int(size) == result.path.stat().st_size


def test_uploader_uses_it_and_cleans_it_up(tmp_path: Path) -> None:
    config = make_config(tmp_path, store=f"file://{tmp_path / 'store'}")
    result = make_bundle(config.spool_dir, size=200_000)
    digest_file = result.path.with_name(result.path.name + ".sha256")
    sealed = digest_file.read_text().split()[0]
    uploader = Uploader(config)
    assert uploader.drain_once() == 1
    assert not digest_file.exists() and not result.path.exists()
    stored = list((tmp_path / "store").rglob(f"*{BUNDLE_SUFFIX}"))
    assert len(stored) == 1 and hashlib.sha256(stored[0].read_bytes()).hexdigest() == sealed


def test_stale_or_malformed_digest_is_ignored(tmp_path: Path) -> None:
    config = make_config(tmp_path, store=f"file://{tmp_path / 'store'}")
    result = make_bundle(config.spool_dir, size=50_000)
    digest_file = result.path.with_name(result.path.name + ".sha256")
    uploader = Uploader(config)
    real = hashlib.sha256(result.path.read_bytes()).hexdigest()
    for text in ("0" * 64 + " 1\n", "nonsense\n", "zz" * 32 + f" {result.path.stat().st_size}\n"):
        digest_file.write_text(text)
        assert uploader._sha256(result.path) == real
    digest_file.unlink()
    assert uploader._sha256(result.path) == real
