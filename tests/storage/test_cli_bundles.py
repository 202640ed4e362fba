"""`dfir-ar bundles` as an analyst meets it (the file:// store; the storage logic itself is in
test_file_store.py): a table on a 100-column terminal, a bundle still in the spool, counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from dfir_ar.cli import common
from dfir_ar.cli.main import cli
from dfir_ar.config.models import Config
from dfir_ar.errors import StoreError, VerificationFailed
from dfir_ar.evidence.spool import Uploader
from tests.storage.conftest import make_bundle, make_config, write_config_file


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, store=f"file://{tmp_path / 'store'}")


@pytest.fixture
def config_file(tmp_path: Path, config: Config) -> Path:
    return write_config_file(tmp_path / "dfir-ar.toml", config)


def upload(config: Config) -> None:
    uploader = Uploader(config)
    uploader.check_store()
    uploader.drain_once()
    assert uploader.pending() == []


def test_bundles_list_on_a_100_column_terminal_cuts_no_id_or_address(
    config: Config, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundles = [make_bundle(config.spool_dir, alert_id=f"1795334410.{4000 + n}") for n in range(2)]
    upload(config)
    monkeypatch.setattr(common, "_terminal_console",
                        lambda: Console(width=100, color_system=None))
    listed = CliRunner().invoke(cli, ["bundles", "list", "-c", str(config_file)])
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert "┃" in listed.stdout and all(len(line) <= 100 for line in lines)
    values = [b.bundle_id for b in bundles] + ["1795334410.4000", "1795334410.4001",
                                               "203.0.113.7"]
    for value in values:
        assert any(value in line for line in lines), (value, listed.stdout)
    assert "…" not in listed.stdout


@pytest.mark.parametrize("command", ["get", "verify"])
def test_a_bundle_still_in_the_spool_is_named_with_the_command_that_uploads_it(
    config: Config, config_file: Path, tmp_path: Path, command: str
) -> None:
    spooled = make_bundle(config.spool_dir)  # sealed, as `run` without serve leaves it
    done = CliRunner().invoke(
        cli, ["bundles", command, spooled.bundle_id, "-c", str(config_file)]
        + (["-o", str(tmp_path / "case")] if command == "get" else [])
    )
    assert isinstance(done.exception, StoreError), done.output
    message = str(done.exception)
    assert f"bundle {spooled.bundle_id} is not in" in message
    assert "sealed but not uploaded yet" in message and "`dfir-ar bundles push`" in message
    assert str(config.spool_dir / "ready" / f"{spooled.bundle_id}.tar.zst") in message
    assert StoreError.exit_code == 7


def test_a_bundle_in_neither_place_gets_no_spool_hint(config: Config, config_file: Path) -> None:
    upload(config)  # the store exists, empty
    done = CliRunner().invoke(
        cli, ["bundles", "get", "01M81X3VQ373Q0M5Z2E1Z74GBT", "-c", str(config_file)]
    )
    assert isinstance(done.exception, StoreError), done.output
    assert "spool" not in str(done.exception)


def test_one_artifact_is_said_in_the_singular(
    config: Config, config_file: Path, tmp_path: Path
) -> None:
    bundle = make_bundle(config.spool_dir)  # one artifact
    upload(config)
    got = CliRunner().invoke(cli, ["bundles", "get", bundle.bundle_id, "--allow-unsigned",
                                   "-o", str(tmp_path / "case"), "-c", str(config_file)])
    assert got.exit_code == 0, got.output
    assert "verified (1 artifact," in got.stdout
    archive = tmp_path / "case" / f"{bundle.bundle_id}.tar.zst"
    verified = CliRunner().invoke(cli, ["bundles", "verify", str(archive), "--allow-unsigned"],
                                  env={"DFIR_AR_CONFIG": ""})
    assert verified.exit_code == 0, verified.output
    assert ", 1 artifact, " in verified.stdout
    assert "1 artifacts" not in got.stdout + verified.stdout
    assert os.path.exists(archive)


@pytest.mark.parametrize("as_json", [False, True])
def test_bundles_list_names_what_waits_in_the_spool(
    config: Config, config_file: Path, as_json: bool
) -> None:
    uploaded = make_bundle(config.spool_dir, alert_id="1795334410.4000")
    upload(config)
    waiting = make_bundle(config.spool_dir, alert_id="1795334410.4001")  # `run` without serve
    listed = CliRunner().invoke(
        cli, ["bundles", "list", "-c", str(config_file)] + (["--json"] if as_json else [])
    )
    assert listed.exit_code == 0, listed.output
    assert uploaded.bundle_id in listed.stdout and waiting.bundle_id not in listed.stdout
    assert f"1 bundle sealed in this host's spool, not uploaded yet ({waiting.bundle_id})" \
        in listed.stderr
    assert "`dfir-ar bundles push`" in listed.stderr
    upload(config)
    again = CliRunner().invoke(cli, ["bundles", "list", "-c", str(config_file)])
    assert waiting.bundle_id in again.stdout and "spool" not in again.stderr


@pytest.mark.parametrize("max_mb", [1, 8])
def test_bundles_get_extracts_up_to_the_configured_bundle_cap(
    tmp_path: Path, max_mb: int
) -> None:
    """`bundles get` refuses to expand more than evidence.max_bundle_mb (a small archive can
    claim gigabytes), and takes what this fleet's agents may collect when the cap is raised."""
    config = make_config(tmp_path, store=f"file://{tmp_path / 'store'}", max_bundle_mb=max_mb)
    config_file = write_config_file(tmp_path / "dfir-ar.toml", config)
    bundle = make_bundle(config.spool_dir, size=3 * 1024 * 1024)
    upload(config)
    out = tmp_path / "case"
    got = CliRunner().invoke(cli, ["bundles", "get", bundle.bundle_id, "--allow-unsigned",
                                   "-o", str(out), "-c", str(config_file)])
    if max_mb == 1:
        assert isinstance(got.exception, VerificationFailed), got.output
        assert VerificationFailed.exit_code == 7
        assert "over the extraction limit of 1048576 bytes (evidence.max_bundle_mb)" \
            in str(got.exception)
        assert not (out / bundle.bundle_id).exists()
    else:
        assert got.exit_code == 0, got.output
        extracted = out / bundle.bundle_id / "artifacts"
        assert sum(f.stat().st_size for f in extracted.rglob("*") if f.is_file()) >= 3 << 20
