"""`dfir-ar config check|import`: validate a config whole; turn an ossec.conf into native TOML."""

from __future__ import annotations

from pathlib import Path

import click

from dfir_ar.cli.common import config_option, load
from dfir_ar.config import config_path, load_config
from dfir_ar.config.toml_out import dumps


@click.group()
def config() -> None:
    """Check a config, or import an OSSEC/Wazuh ossec.conf."""


@config.command()
@config_option
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def check(config_file: Path | None, file: Path | None) -> None:
    """Validate CONFIG (TOML or ossec.conf) and every plug-in setting in it.

    Exits 0 when the config is usable, 2 with one line per problem naming the file, the block,
    the key and the fix. Warnings (e.g. a Wazuh-style ignored timeout) go to stderr.
    """
    loaded = load(file or config_file)
    cfg = loaded.config
    enabled = sum(1 for ar in cfg.active_response if not ar.disabled)
    click.echo(
        f"{loaded.path}: OK — {len(cfg.command)} command(s), {enabled} active response(s) "
        f"enabled, {len(cfg.source)} source(s), matching = {cfg.global_.matching.value}, "
        f"evidence store = {cfg.evidence.store}"
    )


@config.command("import")
@click.argument("ossec_conf", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--no-check-plugins",
    is_flag=True,
    help="Do not require every <executable> to be a dfir-ar plug-in or a file in active_response_dir.",
)
@click.option(
    "--active-response-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the OSSEC/Wazuh scripts live (default /var/ossec/active-response/bin).",
)
@config_option
def import_(
    ossec_conf: Path,
    no_check_plugins: bool,
    active_response_dir: Path | None,
    config_file: Path | None,
) -> None:
    """Print the native TOML equivalent of OSSEC_CONF's <command>, <active-response> and
    <global><white_list> blocks.

    \b
    dfir-ar config import /var/ossec/etc/ossec.conf > /etc/dfir-ar/dfir-ar.toml
    dfir-ar config check -c /etc/dfir-ar/dfir-ar.toml
    """
    del config_file  # accepted for uniformity: import reads only OSSEC_CONF
    overrides = (
        {"global": {"active_response_dir": str(active_response_dir)}} if active_response_dir else None
    )
    loaded = load_config(ossec_conf, check_plugins=not no_check_plugins, overrides=overrides)
    for warning in loaded.warnings:
        click.echo(f"dfir-ar: warning: {warning}", err=True)
    data = loaded.config.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    header = (
        f"Imported by dfir-ar from {ossec_conf}.\n"
        "Review [global] (state_dir, log_dir, active_response_dir) and [evidence] before use."
    )
    click.echo(dumps(data, header=header), nl=False)


__all__ = ["config", "config_path"]
