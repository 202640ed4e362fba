"""The embedded default store (file://DIR) end to end: spool -> store -> list -> get -> verify,
and the faults that must lose nothing: tampering, a full disk, a full spool, a bad manifest."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfir_ar.cli.bundles_remote import get_cmd, list_cmd, push_cmd
from dfir_ar.errors import EvidenceError, StoreError, UsageError, VerificationFailed
from dfir_ar.evidence.retrieve import Filter, fetch_and_verify, list_bundles
from dfir_ar.evidence.spool import SPOOL_FULL_MARK, SpoolFull, Uploader, check_spool_quota
from dfir_ar.evidence.stores.base import ObjectInfo, open_store
from dfir_ar.evidence.stores.file import FileStore
from dfir_ar.ids import new_id
from tests.storage.conftest import TinyDisk, make_bundle, make_config, write_config_file


def _file_config(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    return make_config(tmp_path, store=f"file://{tmp_path / 'store'}", **kw)  # type: ignore[arg-type]


def test_upload_list_get_verify(tmp_path: Path) -> None:
    config = _file_config(tmp_path)
    old = make_bundle(config.spool_dir, created=datetime(2025, 12, 31, 23, 59, tzinfo=UTC), rule_id=1)
    new = make_bundle(config.spool_dir, rule_id=5712, alert_id="1700000000.99")
    other = make_bundle(config.spool_dir, agent_id="agent2", rule_id=5712)
    uploader = Uploader(config)
    uploader.check_store()
    assert uploader.drain_once() == 3
    assert uploader.pending() == []
    assert sorted(os.listdir(config.spool_dir / "ready")) == []
    store_root = tmp_path / "store"
    assert (store_root / "agent1/2025/12/31" / f"{old.bundle_id}.tar.zst").is_file()
    assert (store_root / "agent1/2025/12/31" / f"{old.bundle_id}.manifest.json").is_file()

    store = open_store(config)
    everything = list_bundles(store, Filter())
    assert everything[0].bundle_id == old.bundle_id
    assert {e.bundle_id for e in everything} == {old.bundle_id, new.bundle_id, other.bundle_id}
    recent = list_bundles(store, Filter(agent="agent1", since=datetime.now(UTC) - timedelta(hours=1)))
    assert [e.bundle_id for e in recent] == [new.bundle_id]
    by_alert = list_bundles(store, Filter(alert="1700000000.99"))
    assert [(e.bundle_id, e.rule_id, e.srcip) for e in by_alert] == [(new.bundle_id, "5712", "203.0.113.7")]

    cfg_file = write_config_file(tmp_path / "dfir-ar.toml", config)
    runner = CliRunner()
    out = runner.invoke(list_cmd, ["-c", str(cfg_file), "--rule", "5712", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert {row["bundle_id"] for row in rows} == {new.bundle_id, other.bundle_id}
    stored_new = next((tmp_path / "store").rglob(f"{new.bundle_id}.tar.zst"))
    assert {r["bundle_id"]: r["archive_bytes"] for r in rows}[new.bundle_id] == stored_new.stat().st_size
    table = runner.invoke(list_cmd, ["-c", str(cfg_file), "--until", "2026-01-01"])
    assert table.exit_code == 0 and old.bundle_id in table.output and new.bundle_id not in table.output
    other_file = next((tmp_path / "store").rglob(f"{other.bundle_id}.tar.zst"))
    moved = tmp_path / "moved.tar.zst"
    other_file.rename(moved)  # a bundle gone from the store: its manifest says so
    gone = runner.invoke(list_cmd, ["-c", str(cfg_file), "--agent", "agent2"])
    assert gone.exit_code == 0 and "MISSING" in gone.output
    assert "without their bundle" in gone.output
    moved.rename(other_file)

    case = tmp_path / "case"
    got = runner.invoke(get_cmd, ["-c", str(cfg_file), "--allow-unsigned", new.bundle_id, "-o", str(case)])
    assert got.exit_code == 0, got.output
    assert "verified" in got.output
    assert (case / f"{new.bundle_id}.tar.zst").is_file()
    manifest = json.loads((case / new.bundle_id / "manifest.json").read_bytes())
    assert manifest["bundle_id"] == new.bundle_id
    assert (case / new.bundle_id / "artifacts/test/random.bin").stat().st_size == 4096
    assert [p.name for p in case.iterdir() if p.name.startswith(".")] == []


def test_tampered_bundle_in_store_is_refused_and_nothing_extracted(tmp_path: Path) -> None:
    config = _file_config(tmp_path)
    bundle = make_bundle(config.spool_dir, size=20_000)
    Uploader(config).drain_once()
    stored = next((tmp_path / "store").rglob(f"{bundle.bundle_id}.tar.zst"))
    os.chmod(stored, 0o640)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    case = tmp_path / "case"
    with pytest.raises(VerificationFailed) as info:
        fetch_and_verify(open_store(config), bundle.bundle_id, case, public_key=None, allow_unsigned=True)
    assert "nothing was extracted" in str(info.value)
    assert "recorded when it was uploaded" in str(info.value)
    assert list(case.iterdir()) == []


def test_get_onto_a_full_disk_is_a_clear_error(tmp_path: Path, tiny_disk: TinyDisk) -> None:
    config = _file_config(tmp_path)
    bundle = make_bundle(config.spool_dir, size=6 * 1024 * 1024)
    Uploader(config).drain_once()
    with pytest.raises(EvidenceError, match="no space left") as info:
        fetch_and_verify(open_store(config), bundle.bundle_id, tiny_disk.path, public_key=None,
                         allow_unsigned=True)
    assert "nothing was extracted" in str(info.value)
    assert list(tiny_disk.path.iterdir()) == []


def test_full_store_disk_keeps_the_bundle_in_the_spool(tmp_path: Path, tiny_disk: TinyDisk) -> None:
    config = make_config(tmp_path, store=f"file://{tiny_disk.path}/store")
    bundle = make_bundle(config.spool_dir, size=6 * 1024 * 1024)
    uploader = Uploader(config)
    with pytest.raises(StoreError, match="disk is full"):
        uploader.drain_once()
    assert bundle.path.exists() and bundle.manifest_path.exists()
    assert [p.name for p in (tiny_disk.path / "store").rglob("*") if p.is_file()] == []
    # Space comes back (here: a roomier store); the same spool entry goes up intact.
    roomy = _file_config(tmp_path)
    assert Uploader(roomy).drain_once() == 1
    assert not bundle.path.exists()


def test_spool_quota_raises_and_logs_an_alertable_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _file_config(tmp_path, spool_quota_mb=1)
    make_bundle(config.spool_dir, size=700_000)
    check_spool_quota(config)  # under the quota
    with caplog.at_level(logging.CRITICAL), pytest.raises(SpoolFull, match="spool_quota_mb"):
        check_spool_quota(config, incoming=500_000)
    assert any(SPOOL_FULL_MARK in r.getMessage() and r.levelno == logging.CRITICAL for r in caplog.records)


def test_unreadable_manifest_is_quarantined_not_deleted(tmp_path: Path) -> None:
    config = _file_config(tmp_path)
    good = make_bundle(config.spool_dir)
    bad_id = new_id()
    ready = config.spool_dir / "ready"
    (ready / f"{bad_id}.tar.zst").write_bytes(b"whatever it is, it is kept")
    (ready / f"{bad_id}.manifest.json").write_bytes(b"{truncated")
    assert Uploader(config).drain_once() == 1
    assert not good.path.exists()
    quarantined = sorted(p.name for p in (config.spool_dir / "quarantine").iterdir())
    assert quarantined == [f"{bad_id}.manifest.json", f"{bad_id}.tar.zst"]


def test_push_cli_reports_what_went_and_what_waits(tmp_path: Path) -> None:
    config = _file_config(tmp_path)
    bundle = make_bundle(config.spool_dir)
    cfg_file = write_config_file(tmp_path / "dfir-ar.toml", config)
    result = CliRunner().invoke(push_cmd, ["-c", str(cfg_file), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [u["bundle_id"] for u in report["uploaded"]] == [bundle.bundle_id]
    assert report["waiting"] == []


def test_bundles_verify_accepts_an_id_fetched_from_the_store(tmp_path: Path) -> None:
    from dfir_ar.cli.main import cli

    config = _file_config(tmp_path)
    good = make_bundle(config.spool_dir)
    bad = make_bundle(config.spool_dir)
    Uploader(config).drain_once()
    cfg = str(write_config_file(tmp_path / "dfir-ar.toml", config))
    runner = CliRunner()
    ok = runner.invoke(cli, ["bundles", "verify", "--allow-unsigned", "-c", cfg, good.bundle_id])
    assert ok.exit_code == 0, ok.output
    assert f"OK    {good.bundle_id}" in ok.output
    stored = next((tmp_path / "store").rglob(f"{bad.bundle_id}.tar.zst"))
    os.chmod(stored, 0o640)
    data = bytearray(stored.read_bytes())
    data[-100] ^= 0xFF
    stored.write_bytes(bytes(data))
    failed = runner.invoke(cli, ["bundles", "verify", "--allow-unsigned", "-c", cfg, "--json",
                                 good.bundle_id, bad.bundle_id])
    assert failed.exit_code != 0
    assert isinstance(failed.exception, VerificationFailed) and failed.exception.exit_code == 7
    reports = json.loads(failed.output[: failed.output.rindex("]") + 1])
    assert [r["ok"] for r in reports] == [True, False]
    assert any("recorded when it was uploaded" in p for p in reports[1]["problems"])
    url = runner.invoke(cli, ["bundles", "url", "-c", cfg, good.bundle_id])
    assert isinstance(url.exception, UsageError) and url.exception.exit_code == 2
    assert "file store" in str(url.exception) and good.bundle_id in str(url.exception)
    nonsense = runner.invoke(cli, ["bundles", "verify", "--allow-unsigned", "-c", cfg, "not-an-id-or-file"])
    assert nonsense.exit_code == 2 and "neither a file nor a bundle id" in nonsense.output
    # list/get/url/push are in the same group
    listed = runner.invoke(cli, ["bundles", "list", "-c", cfg, "--json"])
    assert listed.exit_code == 0 and {r["bundle_id"] for r in json.loads(listed.output)} == {
        good.bundle_id, bad.bundle_id}


class _CountingStore(FileStore):
    """The real file store, recording which prefixes were listed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listed: list[str] = []

    def list_dirs(self, prefix: str) -> list[str]:
        self.listed.append(prefix)
        return super().list_dirs(prefix)

    def list_keys(self, prefix: str) -> Iterator[ObjectInfo]:
        self.listed.append(prefix)
        return super().list_keys(prefix)


def test_list_with_agent_and_since_touches_only_those_prefixes(tmp_path: Path) -> None:
    config = _file_config(tmp_path)
    for day in (1, 2, 3):
        make_bundle(config.spool_dir, created=datetime(2026, 5, day, 12, tzinfo=UTC))
        make_bundle(config.spool_dir, agent_id="agent2", created=datetime(2026, 5, day, 12, tzinfo=UTC))
    make_bundle(config.spool_dir, created=datetime(2025, 5, 3, 12, tzinfo=UTC))
    Uploader(config).drain_once()
    (tmp_path / "store" / "not an agent!").mkdir()  # put there by something else: skipped
    assert {e.bundle_id for e in list_bundles(open_store(config), Filter())} >= {
        e.bundle_id for e in list_bundles(open_store(config), Filter(agent="agent2"))}
    store = _CountingStore(tmp_path / "store")
    found = list_bundles(store, Filter(agent="agent1", since=datetime(2026, 5, 3, tzinfo=UTC)))
    assert [e.created.day for e in found] == [3] and found[0].agent_id == "agent1"
    assert not any("agent2" in p for p in store.listed)
    skipped = ("agent1/2025", "agent1/2026/05/01", "agent1/2026/05/02")
    assert not any(p.startswith(skipped) for p in store.listed)
