"""`dfir-ar serve`: local mode. Alerts in, responses and evidence out, until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from dfir_ar.cli.common import config_option, load, setup_logging


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
    control socket (global.socket_path, root only).

    \b
    A graceful stop (SIGTERM, SIGINT) leaves active blocks in place; the next start reconciles
    them. Set global.lift_on_stop = true for OSSEC/Wazuh behaviour (lift everything on stop).

    \b
    Example:
      dfir-ar serve -c /etc/dfir-ar/dfir-ar.toml --alerts /var/ossec/logs/alerts/alerts.json
    """
    setup_logging(verbose + 1)  # a daemon reports what it does: INFO by default
    loaded = load(config_file)  # a config error exits 2 before anything starts
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
