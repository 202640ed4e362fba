"""Evidence and the ledger are root's only, whatever the umask (security review finding 3)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfir_ar.collector import Outcome, Status
from dfir_ar.ledger import Ledger
from tests.evidence.helpers import make_writer


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The umask a service may well run under: files 0644, dirs 0755 by default."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _wide_under(root: Path) -> dict[str, str]:
    """Paths under ``root`` that are not 0700 (dirs) or 0600 (files), with their modes."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        for name, want in [(d, 0o700) for d in dirs] + [(f, 0o600) for f in files]:
            path = Path(dirpath) / name
            if _mode(path) != want:
                found[str(path.relative_to(root))] = oct(_mode(path))
    return found


def test_spool_dirs_and_files_are_owner_only(tmp_path: Path, loose_umask: None) -> None:
    spool = tmp_path / "state" / "deep" / "spool"  # parents dfir-ar creates itself
    writer = make_writer(spool)
    with writer.artifact("core.bin", "application/octet-stream") as art:
        art.write(b"secret memory")
        staged = writer.staging_dir / "artifacts" / "test" / "core.bin"
        assert _mode(staged) == 0o600  # while it is written, not only after the seal
    assert not _wide_under(tmp_path), "staging readable by others"
    writer.end_collector(Outcome(Status.OK))
    result = writer.seal()
    assert result.path.is_file()
    assert not _wide_under(tmp_path), f"readable by others: {_wide_under(tmp_path)}"
    ready = {p.name: _mode(p) for p in (spool / "ready").iterdir()}
    assert ready and set(ready.values()) == {0o600}, ready


def test_a_stale_temp_file_does_not_keep_its_wide_mode(tmp_path: Path, loose_umask: None) -> None:
    """A temp name left by a crash (0644, from an older version) is replaced, not reused."""
    writer = make_writer(tmp_path / "spool")
    stale = writer.staging_dir / ".state.json.tmp"
    stale.write_bytes(b"old")
    os.chmod(stale, 0o644)
    writer.end_collector(Outcome(Status.OK))
    result = writer.seal()
    assert _mode(result.manifest_path) == 0o600


def test_ledger_and_its_wal_are_owner_only(tmp_path: Path, loose_umask: None) -> None:
    state = tmp_path / "var" / "lib" / "dfir-ar"
    ledger = Ledger.open(state)
    try:
        files = {p.name: _mode(p) for p in state.iterdir()}
    finally:
        ledger.close()
    assert {"ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"} <= set(files), files
    assert set(files.values()) == {0o600}, {k: oct(v) for k, v in files.items()}
    for directory in (state, state.parent, state.parent.parent):
        assert _mode(directory) == 0o700, directory
    assert os.umask(0o022) == 0o022  # restored after the open
