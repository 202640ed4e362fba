"""`dfir-ar bundles`: verify evidence bundles here; list/get/url (remote) are added from
dfir_ar/cli/bundles_remote.py when that module exists (see ``_add_remote_commands``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dfir_ar.cli.common import config_option, json_option, plural, print_json
from dfir_ar.errors import VerificationFailed

if TYPE_CHECKING:
    from dfir_ar.evidence.verify import VerifyReport


@click.group("bundles")
def bundles() -> None:
    """Find, fetch and verify evidence bundles (<bundle_id>.tar.zst)."""


def _default_key(config_file: Path | None) -> Path | None:
    """evidence.verify_key from the config, when a config was named (-c or $DFIR_AR_CONFIG):
    verifying a downloaded file must not require a config on the analyst's laptop."""
    if config_file is None and not os.environ.get("DFIR_AR_CONFIG"):
        return None
    from dfir_ar.cli.common import load

    return load(config_file, check_plugins=False).config.evidence.verify_key


@bundles.command("verify")
@click.argument("files", nargs=-1, required=True, metavar="ID|FILE...")
@click.option("--key", "key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ed25519 public key (signing.pub). Default: evidence.verify_key of -c CONFIG.")
@click.option("--allow-unsigned", is_flag=True,
              help="With a key, accept bundles that carry no signature.")
@config_option
@json_option
def verify(files: tuple[str, ...], key: Path | None, allow_unsigned: bool,
           config_file: Path | None, as_json: bool) -> None:
    """Check every artifact's SHA-256 and size, the archive's integrity and the signature.

    \b
    Exit status 0 when every FILE verifies, 7 when any fails; each failure is named.
    Examples:
      dfir-ar bundles verify 01J9Z3W0K6V8E3QF4M2N7R5T1A.tar.zst --key signing.pub
      dfir-ar bundles verify --json ready/*.tar.zst
      dfir-ar bundles verify -c CONFIG 01J9Z3W0K6V8E3QF4M2N7R5T1A   (fetched from the store)
    """
    from dfir_ar.cli.bundles_remote import verify_targets
    from dfir_ar.evidence.verify import verify_bundle

    key = key or _default_key(config_file)
    reports = []
    with verify_targets(files, config_file) as targets:
        for path, upload_problems in targets:
            report = _verify_one(verify_bundle, path, key, allow_unsigned)
            # A bundle fetched by ID is also checked against the SHA-256 recorded at upload.
            report.problems[:0] = upload_problems
            report.ok = report.ok and not upload_problems
            reports.append(report)
    if as_json:
        print_json([r.to_json() for r in reports])
    else:
        for r in reports:
            m = r.manifest
            label = m.bundle_id if m else r.path.name
            if r.ok:
                assert m is not None
                click.echo(
                    f"OK    {label}  collection {m.status.value}, "
                    f"{plural(r.artifacts_checked, 'artifact')}, "
                    f"{r.bytes_checked} bytes checked, signature {r.signature}"
                )
                # The archive is intact; say what the collection itself did not get.
                for c in m.collectors:
                    if c.status.value != "ok":
                        click.echo(f"      {c.name} {c.status.value}: {c.reason or c.error}")
            else:
                click.echo(f"FAIL  {label}  ({r.path})")
                for problem in r.problems:
                    click.echo(f"      - {problem}")
            for note in r.notes:
                click.echo(f"      note: {note}")
    failed = sum(not r.ok for r in reports)
    if failed:
        raise VerificationFailed(f"{failed} of {len(reports)} bundle(s) failed verification")


SHOW_PROGRESS_FROM = 64 * 1024 * 1024


def _verify_one(verify_bundle: Any, path: Path, key: Path | None,
                allow_unsigned: bool) -> VerifyReport:
    """Verify one file, with a progress bar on a terminal for big bundles (GBs of pcap)."""
    size = path.stat().st_size
    if size < SHOW_PROGRESS_FROM or not sys.stderr.isatty():
        report: VerifyReport = verify_bundle(path, key, allow_unsigned=allow_unsigned)
        return report
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"verifying {path.name}", total=size)
        report = verify_bundle(path, key, allow_unsigned=allow_unsigned,
                               progress=lambda done: bar.update(task, completed=done))
    return report


def _add_remote_commands() -> None:
    """The storage side (list, get, url) lives in dfir_ar/cli/bundles_remote.py, which exports
    ``COMMANDS: list[click.Command]``; they join this group here."""
    import importlib

    try:
        bundles_remote = importlib.import_module("dfir_ar.cli.bundles_remote")
    except ModuleNotFoundError as exc:
        if exc.name != "dfir_ar.cli.bundles_remote":
            raise
        return
    for command in bundles_remote.COMMANDS:
        bundles.add_command(command)


_add_remote_commands()
