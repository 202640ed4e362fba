"""Pieces every command shares: the -c option, config loading with warnings, table/JSON output."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from dfir_ar.config import LoadedConfig, config_path, load_config

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


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "") -> None:
    """A plain aligned table (rich when stdout is a terminal); nothing fancy to parse around."""
    if not rows and empty:
        click.echo(empty)
        return
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(*headers, show_lines=False)
        for row in rows:
            # Text, not str: cells carry alert fields, and rich would read "[/x]" as markup
            # (and raise MarkupError on an unbalanced tag an attacker wrote).
            table.add_row(*(Text("" if c is None else str(c)) for c in row))
        Console().print(table)
        return
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def setup_logging(verbose: int = 0) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
