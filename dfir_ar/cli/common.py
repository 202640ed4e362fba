"""Pieces every command shares: the -c option, config loading with warnings, table/JSON output."""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dfir_ar.config import LoadedConfig, config_path, load_config

if TYPE_CHECKING:
    from rich.console import Console

    from dfir_ar.config.models import Config

F = TypeVar("F", bound=Callable[..., Any])


def config_option(func: F) -> F:
    """``-c/--config`` with the documented default chain (-c, $DFIR_AR_CONFIG, /etc/...)."""
    return click.option(
        "-c",
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (TOML or ossec.conf). Default: $DFIR_AR_CONFIG or /etc/dfir-ar/dfir-ar.toml.",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")(func)


def load(config_file: Path | None, *, check_plugins: bool = True) -> LoadedConfig:
    loaded = load_config(config_path(config_file), check_plugins=check_plugins)
    for warning in loaded.warnings:
        click.echo(f"dfir-ar: warning: {warning}", err=True)
    return loaded


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    empty: str = "",
    *,
    whole: Collection[str] = (),
    optional: Collection[str] = (),
) -> None:
    """A plain aligned table (rich when stdout is a terminal); nothing fancy to parse around.

    ``whole``: headers of the columns whose values are copied into other commands (ids,
    addresses, command names): never shortened or wrapped. When the terminal is too narrow for
    them and the other columns (each cut to "…"), the plain rows are printed instead (the
    terminal wraps those, but cuts nothing).
    ``optional``: headers of columns left out when no row has a value in them.
    """
    if not rows and empty:
        click.echo(empty)
        return
    cells = [["" if c is None else str(c) for c in r] for r in rows]
    keep = [i for i, h in enumerate(headers) if h not in optional or any(r[i] for r in cells)]
    headers = [str(headers[i]) for i in keep]
    cells = [[r[i] for i in keep] for r in cells]
    console = _terminal_console()
    if console is not None and _print_rich(console, headers, cells, whole):
        return
    table = [headers, *cells]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    for r in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _terminal_console() -> Console | None:
    """A rich console when stdout is a terminal (tests replace this to force a width)."""
    if not sys.stdout.isatty():
        return None
    from rich.console import Console

    return Console()


def _print_rich(console: Console, headers: list[str], cells: list[list[str]],
                whole: Collection[str]) -> bool:
    """Print ``cells`` as a rich table if every ``whole`` value fits uncut on ``console``'s
    width; False (nothing printed) when it does not."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_lines=False, box=box.HEAVY_HEAD)  # "┡" ends the header (below)
    for i, header in enumerate(headers):
        if header in whole:
            longest = max([len(header), *(len(r[i]) for r in cells)])
            table.add_column(header, no_wrap=True, overflow="fold", min_width=longest)
        else:  # may wrap between words, never cut one
            word = max(len(w) for c in (header, *(r[i] for r in cells)) for w in [*c.split(), ""])
            table.add_column(header, min_width=word)
    for row in cells:
        # Text, not str: cells carry alert fields, and rich would read "[/x]" as markup
        # (and raise MarkupError on an unbalanced tag an attacker wrote).
        table.add_row(*(Text(c) for c in row))
    # Rendered once without colour at the same width: is every whole value on one line, and
    # no other value squeezed to an ellipsis (a header may be: "OFFEN…" still reads)?
    buf = io.StringIO()
    Console(file=buf, width=console.width, color_system=None, force_terminal=False,
            legacy_windows=False).print(table)
    lines = buf.getvalue().splitlines()
    body = lines[next((n for n, line in enumerate(lines) if line.startswith("┡")), 0):]
    if any("…" in line for line in body) and not any("…" in c for r in cells for c in r):
        return False
    for i, header in enumerate(headers):
        if header not in whole:
            continue
        for row in cells:
            if row[i] and not any(row[i] in line for line in lines):
                return False
    console.print(table)
    return True


def spooled_bundle(config: Config, bundle_id: str) -> Path | None:
    """The sealed, not yet uploaded ``<spool_dir>/ready/<id>.tar.zst``, if it is there."""
    path = config.spool_dir / "ready" / f"{bundle_id}.tar.zst"
    try:
        return path if path.is_file() else None
    except OSError:
        return None


def spooled_ids(config: Config) -> list[str]:
    """Ids of the sealed bundles in this host's spool that are not uploaded yet (a collection
    `dfir-ar run` made without serve, or one waiting for the store), oldest first."""
    from dfir_ar.errors import StateError
    from dfir_ar.evidence.spool import ready_entries

    try:
        return [e.bundle_id for e in ready_entries(config.spool_dir / "ready")]
    except StateError:
        return []  # only a hint: an unreadable spool is reported by push and serve


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 artifact``, ``2 artifacts``."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def operator_name() -> str:
    """Who runs this command: the sudo user behind root if any, else the login name (what
    `dfir-ar run` sends serve, which adds the uid and pid the kernel reports)."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "?"


def local_operator() -> str:
    """The operator recorded when this process acts itself (no serve): the same form serve
    records for a request on its control socket, ``root (uid 0, pid N)``."""
    from dfir_ar.errors import DfirArError
    from dfir_ar.validate import parse_username

    try:
        name = parse_username(operator_name())
    except DfirArError:
        name = "?"
    return f"{name} (uid {os.getuid()}, pid {os.getpid()})"


def setup_logging(verbose: int = 0) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
