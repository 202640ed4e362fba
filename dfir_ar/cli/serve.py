"""`dfir-ar serve`: local mode. Alerts in, responses and evidence out, until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from dfir_ar.cli.common import config_option, load, setup_logging
from dfir_ar.config.models import Config


@click.command()
@config_option
@click.option(
    "--alerts",
    "alerts",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also tail this alerts file (format detected: Wazuh alerts.json, OSSEC alerts.log, "
    "plain JSON). Repeatable. Resumes where it stopped across restarts.",
)
@click.option("-v", "--verbose", count=True, help="-v: debug output from every part.")
def serve(config_file: Path | None, alerts: tuple[Path, ...], verbose: int) -> None:
    """Run local mode: manager and agent in one process on this host (OSSEC's "local" install).

    \b
    Reads alerts from the config's [[source]] blocks and from --alerts, runs the matching
    responses and collections, undoes each response when its timeout ends (durably: a crash or
    restart neither loses nor repeats an alert, and expired blocks are lifted on the next start),
    and uploads evidence bundles. `dfir-ar run` and `dfir-ar blocks release` talk to it over the
    control socket (global.control_socket, root only).

    \b
    The config is read once, at start: restart serve to apply a change (there is no reload).
    An alerts file that does not exist yet is waited for (a WARNING names it); an --alerts PATH
    whose directory does not exist is refused (exit 2): it is a typo, nothing would ever appear.

    \b
    A graceful stop (SIGTERM, SIGINT) leaves active blocks in place; the next start reconciles
    them. Set global.lift_on_stop = true for OSSEC/Wazuh behaviour (lift everything on stop).

    \b
    Example:
      dfir-ar serve -c /etc/dfir-ar/dfir-ar.toml --alerts /var/ossec/logs/alerts/alerts.json
    """
    setup_logging(verbose + 1)  # a daemon reports what it does: INFO by default
    loaded = load(config_file)  # a config error exits 2 before anything starts
    _check_alert_paths(loaded.config, alerts)
    from dfir_ar.service import Service

    service = Service(loaded.config, extra_alerts=alerts)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        service.stop_event.set()
        if service.executor is not None:
            service.executor.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        service.start()
        from dfir_ar.service import tune_gc

        tune_gc()
        # Short waits keep the main thread responsive to signals.
        while not service.stop_event.wait(1.0):
            pass
    finally:
        service.stop()
    if service.errors:
        sys.exit(1)


def _check_alert_paths(config: Config, alerts: tuple[Path, ...]) -> None:
    """A followed file that does not exist: --alerts whose directory is missing too is a typo
    (UsageError, exit 2: nothing would ever appear there); otherwise serve waits for the file,
    with a WARNING naming it. Config [[source]] paths are only warned about: on a fresh host
    Wazuh may not have created /var/ossec/logs/alerts yet, and serve must start anyway."""
    import logging

    from dfir_ar.errors import UsageError

    log = logging.getLogger("dfir_ar.serve")
    for path in alerts:
        if not _exists(path) and not _exists(path.parent):
            raise UsageError(
                f"--alerts {path}: neither the file nor its directory {path.parent} exists "
                "(a typo?); serve would wait for it forever"
            )
    configured = [s.path for s in config.source if s.type == "file" and s.path is not None]
    for path in [*configured, *alerts]:
        if not _exists(path):
            where = "--alerts" if path in alerts else "[[source]] path"
            gone = "" if _exists(path.parent) else f" (nor does its directory {path.parent})"
            # (Not "to appear": tests/engine/e2e.py waits for the tail's own line with those words.)
            log.warning("%s %s does not exist%s; serve waits until it is created: check the "
                        "path if alerts should already be written there", where, path, gone)


def _exists(path: Path) -> bool:
    """True unless ``path`` is known not to exist (a directory we may not search counts as
    existing: serve reports that itself when it opens the file)."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True
