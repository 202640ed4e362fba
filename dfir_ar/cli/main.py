"""Entry point: a click group whose subcommands live in their own modules and load lazily, so
``dfir-ar --help`` does not import scapy, yara or boto3.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from dfir_ar import __version__
from dfir_ar.errors import DfirArError, StateError

# name -> (module, attribute, one-line help shown in --help without importing the module)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("dfir_ar.cli.serve", "serve", "Run local mode: alerts in, responses and evidence out."),
    "run": ("dfir_ar.cli.run", "run", "Trigger a response or collection by hand."),
    "simulate": ("dfir_ar.cli.simulate", "simulate", "Show what alerts would fire, and why not."),
    "config": ("dfir_ar.cli.config", "config", "Check a config, or import an ossec.conf."),
    "blocks": ("dfir_ar.cli.blocks", "blocks", "List or release active stateful responses."),
    "plugins": ("dfir_ar.cli.plugins", "plugins", "List responders and collectors, or show one."),
    "bundles": ("dfir_ar.cli.bundles", "bundles", "List, fetch, verify evidence bundles."),
    "keys": ("dfir_ar.cli.keys", "keys", "Generate the ed25519 key that signs bundles."),
    "wazuh-ar": ("dfir_ar.cli.wazuh_ar", "wazuh_ar", "Act as a Wazuh active-response executable."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        command = getattr(module, spec[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, spec[2]) for name, spec in sorted(COMMANDS.items())])

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and name not in COMMANDS and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            hint = f' Did you mean "{close[0]}"?' if close else ""
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dfir-ar")
def cli() -> None:
    """dfir-ar: contain attackers for a while and capture the evidence, from security alerts.

    \b
    Local mode on one host:     dfir-ar serve -c examples/local.toml
    What would an alert do?     dfir-ar simulate -c CONFIG alerts.json
    Block by hand for 10 min:   dfir-ar run firewall-drop --local --srcip 203.0.113.7 --timeout 600
    What is blocked now?        dfir-ar blocks list
    """


_NOT_ROOT_HINT = "; dfir-ar's state is root-only: run as root"


def _not_root() -> bool:
    import os

    return os.geteuid() != 0


def permission_message(exc: PermissionError) -> str:
    """One line for a file dfir-ar may not read or write: its state (ledger, spool, control
    socket) is root-only, so a non-root user is told to run as root; no traceback."""
    what = exc.filename if exc.filename is not None else exc.strerror or str(exc)
    return f"{what}: permission denied" + (_NOT_ROOT_HINT if _not_root() else "")


def main(argv: list[str] | None = None) -> Any:
    if argv is None and sys.argv and not sys.argv[0].endswith("dfir-ar"):
        from dfir_ar.cli.wazuh_ar import link_main  # exec'ed as active-response/bin/<plug-in>

        link_main(sys.argv)
    try:
        return cli.main(args=argv, prog_name="dfir-ar", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DfirArError as exc:
        text = str(exc)
        if isinstance(exc, StateError) and isinstance(exc.__context__, PermissionError):
            text += _NOT_ROOT_HINT if _not_root() else ""  # e.g. the state lock, as non-root
        click.echo(f"dfir-ar: error: {text}", err=True)
        sys.exit(exc.exit_code)
    except PermissionError as exc:
        click.echo(f"dfir-ar: error: {permission_message(exc)}", err=True)
        sys.exit(StateError.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
