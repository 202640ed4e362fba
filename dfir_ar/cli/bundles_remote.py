"""``dfir-ar bundles list|get|url|push``: the incident responder's view of the evidence store.

Added to the ``bundles`` group in dfir_ar/cli/bundles.py. boto3 is imported only when a command
talks to an s3:// store.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from dfir_ar.cli.common import (
    config_option,
    json_option,
    load,
    plural,
    print_json,
    print_table,
    spooled_bundle,
    spooled_ids,
)

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class TimeParam(click.ParamType[datetime]):
    """``2026-11-22``, ``2026-11-22T08:00``, ``2026-11-22T08:00:00+01:00`` (naive = UTC), or a
    span back from now: ``30m``, ``12h``, ``7d``, ``2w``."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        rel = _RELATIVE.match(text)
        if rel:
            return datetime.now(UTC) - timedelta(seconds=int(rel.group(1)) * _UNITS[rel.group(2)])
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(
                f"{text!r} is not a time; use 2026-11-22, 2026-11-22T08:00 (UTC), or 30m / 12h / 7d",
                param,
                ctx,
            )
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


TIME = TimeParam()


def _store(config_file: Path | None) -> Any:
    from dfir_ar.evidence.stores.base import open_store

    loaded = load(config_file, check_plugins=False)
    return loaded.config, open_store(loaded.config)


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int], Callable[[int], None]]]:
    """A rich progress bar on stderr when it is a terminal; silent otherwise (scripts, CI)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=False,
    )

    def factory(total: int) -> Callable[[int], None]:
        task = progress.add_task(label, total=total or None)
        return lambda n: progress.advance(task, n)

    with progress:
        yield factory


@contextmanager
def _spool_hint(config: Any, bundle_id: str) -> Iterator[None]:
    """A bundle the store does not have may still sit in this host's spool (collected by a
    `dfir-ar run` without serve, or waiting for the uploader): the error then says so."""
    from dfir_ar.errors import StoreError

    try:
        yield
    except StoreError as exc:
        path = spooled_bundle(config, bundle_id)
        if path is None:
            raise
        raise StoreError(
            f"{exc}. It is in this host's spool, sealed but not uploaded yet ({path}): run "
            "`dfir-ar bundles push` to upload it (a running serve uploads it by itself)"
        ) from None


@click.command("list", short_help="List bundles in the store (from manifests; filters; --json).")
@config_option
@click.option("--agent", metavar="ID", help="Only this agent's bundles (lists just its prefix).")
@click.option("--rule", metavar="ID", help="Only bundles triggered by this rule id.")
@click.option("--alert", metavar="ID", help="Only bundles triggered by this alert id.")
@click.option("--since", type=TIME, help="Created at or after (2026-11-22, 2026-11-22T08:00, 12h, 7d).")
@click.option("--until", type=TIME, help="Created at or before (same forms as --since).")
@json_option
def list_cmd(
    config_file: Path | None,
    agent: str | None,
    rule: str | None,
    alert: str | None,
    since: datetime | None,
    until: datetime | None,
    as_json: bool,
) -> None:
    """List evidence bundles in the store, from their manifests (no bundle is downloaded).

    \b
    dfir-ar bundles list --since 24h
    dfir-ar bundles list --agent 001 --rule 5712 --json
    """
    from dfir_ar.evidence.retrieve import Filter, list_bundles

    config, store = _store(config_file)
    entries = list_bundles(
        store, Filter(agent=agent, rule=rule, alert=alert, since=since, until=until)
    )
    if as_json:
        print_json([e.to_json() for e in entries])
        _note_spooled(config)
        return
    print_table(
        ["BUNDLE", "CREATED (UTC)", "AGENT", "RULE", "ALERT", "SRCIP", "STATUS", "COLLECTORS", "SIZE"],
        [
            (
                e.bundle_id,
                f"{e.created.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
                e.agent_id,
                e.rule_id,
                e.alert_id,
                e.srcip,
                e.status,
                ",".join(e.collectors),
                _size(e.archive_bytes) if e.archive_bytes is not None else "MISSING",
            )
            for e in entries
        ],
        empty=f"no bundles in {store.url} match",
        whole=("BUNDLE", "ALERT", "SRCIP"),
    )
    missing = [e.bundle_id for e in entries if e.archive_bytes is None]
    if missing:
        click.echo(
            f"dfir-ar: warning: {len(missing)} manifest(s) without their bundle in the store "
            f"(deleted, or an upload still under way): {', '.join(missing[:5])}",
            err=True,
        )
    _note_spooled(config)


def _note_spooled(config: Any) -> None:
    """Bundles this host sealed but has not uploaded are not in the store's listing yet: say so
    (on stderr, so --json stays one document), or a fresh `run`'s evidence looks lost."""
    waiting = spooled_ids(config)
    if waiting:
        more = ", ..." if len(waiting) > 3 else ""
        click.echo(
            f"dfir-ar: note: {plural(len(waiting), 'bundle')} sealed in this host's spool, not "
            f"uploaded yet ({', '.join(waiting[:3])}{more}): `dfir-ar bundles push` uploads "
            "them (a running serve does it by itself)",
            err=True,
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


@click.command("get", short_help="Download, verify (hashes + signature), then extract a bundle.")
@config_option
@click.argument("bundle_id")
@click.option(
    "-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
    show_default=True, help="Directory for <ID>.tar.zst and the extracted <ID>/.",
)
@click.option("--agent", metavar="ID", help="The agent, if known (saves a lookup per agent).")
@click.option(
    "--key", "public_key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="ed25519 public key; default: evidence.verify_key.",
)
@click.option("--allow-unsigned", is_flag=True, help="Accept a bundle without signature even with a key.")
@click.option("--no-extract", is_flag=True, help="Download and verify only.")
@json_option
def get_cmd(
    config_file: Path | None,
    bundle_id: str,
    out_dir: Path,
    agent: str | None,
    public_key: Path | None,
    allow_unsigned: bool,
    no_extract: bool,
    as_json: bool,
) -> None:
    """Download a bundle, verify every hash and the signature, then extract it.

    Nothing is extracted unless the whole bundle verifies; a truncated or tampered download
    exits 7 and leaves no <ID>/ directory behind.

    \b
    dfir-ar bundles get 01JD3K7W0Q9X8Y7Z6A5B4C3D2E -o ./case-42
    """
    from dfir_ar.evidence.retrieve import fetch_and_verify

    config, store = _store(config_file)
    key = public_key or config.evidence.verify_key
    with _progress(f"get {bundle_id}") as factory, _spool_hint(config, bundle_id):
        fetched = fetch_and_verify(
            store,
            bundle_id,
            out_dir,
            public_key=key,
            allow_unsigned=allow_unsigned,
            extract=not no_extract,
            agent=agent,
            progress_factory=factory,
            # This fleet's own cap on one bundle: what its agents may collect is extractable.
            max_extract=config.evidence.max_bundle_mb * 1024 * 1024,
        )
    report = fetched.report
    if as_json:
        print_json(
            {
                "bundle_id": fetched.entry.bundle_id,
                "archive": str(fetched.archive),
                "extracted": str(fetched.extracted) if fetched.extracted else None,
                "signature": report.signature,
                "artifacts_checked": report.artifacts_checked,
                "status": fetched.entry.status,
            }
        )
        return
    click.echo(
        f"bundle {fetched.entry.bundle_id}: verified "
        f"({plural(report.artifacts_checked, 'artifact')}, "
        f"signature {report.signature}, collection status {fetched.entry.status})"
    )
    click.echo(f"  archive:   {fetched.archive}")
    if fetched.extracted:
        click.echo(f"  extracted: {fetched.extracted}")


@click.command("url", short_help="Print a presigned SigV4 download URL for a bundle.")
@config_option
@click.argument("bundle_id")
@click.option("--expires", type=click.IntRange(1, 604800), default=3600, show_default=True,
              metavar="SECONDS", help="Validity (SigV4 allows at most 7 days).")
@click.option("--agent", metavar="ID", help="The agent, if known.")
@click.option("--manifest", "of_manifest", is_flag=True, help="Sign the manifest object instead.")
def url_cmd(
    config_file: Path | None, bundle_id: str, expires: int, agent: str | None, of_manifest: bool
) -> None:
    """Print a presigned SigV4 GET URL for a bundle (curl -o ID.tar.zst 'URL' fetches it).

    Anyone holding the URL can download the bundle until it expires; the bundle still
    verifies with `dfir-ar bundles verify FILE`.
    """
    from dfir_ar.evidence.retrieve import find_bundle

    _, store = _store(config_file)
    entry = find_bundle(store, bundle_id, agent=agent)
    click.echo(store.presign(entry.manifest_key if of_manifest else entry.bundle_key, expires))


@click.command("push", short_help="Upload what waits in the spool now (--check: test the store).")
@config_option
@click.option("--check", "check_only", is_flag=True, help="Only test the store (small write).")
@json_option
def push_cmd(config_file: Path | None, check_only: bool, as_json: bool) -> None:
    """Upload the bundles waiting in the spool now, and say what is left.

    The service does this by itself with back-off; use push after an outage, from cron next to
    `wazuh-ar`, or with --check to test the store's credentials and bucket.
    """
    from dfir_ar.evidence.spool import Uploader

    loaded = load(config_file, check_plugins=False)
    with _progress("upload") as factory:
        bars: dict[str, Callable[[int], None]] = {}
        done: dict[str, int] = {}

        def report(bundle_id: str, current: int, total: int) -> None:
            if bundle_id not in bars:
                bars[bundle_id] = factory(total)
                done[bundle_id] = 0
            bars[bundle_id](current - done[bundle_id])
            done[bundle_id] = current

        uploader = Uploader(loaded.config, progress=report)
        uploader.check_store()
        if check_only:
            click.echo(f"{uploader.store.url}: write test passed")
            return
        try:
            uploader.drain_once()
        finally:
            left = [e.bundle_id for e in uploader.pending()]
            if as_json:
                print_json(
                    {
                        "uploaded": [
                            {"bundle_id": u.bundle_id, "key": u.bundle_key, "bytes": u.size,
                             "seconds": round(u.seconds, 3), "parts_reused": u.stats.parts_reused}
                            for u in uploader.uploaded
                        ],
                        "waiting": left,
                    }
                )
            else:
                for u in uploader.uploaded:
                    click.echo(f"uploaded {u.bundle_id} -> {uploader.store.describe(u.bundle_key)}")
                click.echo(f"{len(uploader.uploaded)} uploaded, {len(left)} waiting in the spool")


@contextmanager
def verify_targets(
    items: tuple[str, ...], config_file: Path | None
) -> Iterator[list[tuple[Path, list[str]]]]:
    """For ``bundles verify ID|FILE...``: a FILE is used as it is; a bundle ID (not an existing
    file) is fetched from the store named by the config into a temporary directory, removed on
    exit. Yields (path, problems found before verify: a mismatch with the upload record)."""
    import shutil

    from dfir_ar.evidence.retrieve import fetch_for_verify
    from dfir_ar.ids import is_id

    work: Path | None = None
    store: Any = None
    config: Any = None
    targets: list[tuple[Path, list[str]]] = []
    try:
        for item in items:
            path = Path(item)
            if path.is_file():
                targets.append((path, []))
                continue
            if not is_id(item):
                raise click.BadParameter(
                    f"{item!r} is neither a file nor a bundle id", param_hint="ID|FILE"
                )
            if store is None:
                config, store = _store(config_file)
                work = Path(tempfile.mkdtemp(prefix="dfir-ar-verify-"))
            assert work is not None
            with _progress(f"fetch {item}") as factory, _spool_hint(config, item):
                targets.append(fetch_for_verify(store, item, work, progress_factory=factory))
        yield targets
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


COMMANDS = (list_cmd, get_cmd, url_cmd, push_cmd)


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
