"""`dfir-ar run`: a response or collection by hand (OSSEC's agent_control -b/-f/-u)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from dfir_ar.cli.common import (
    config_option,
    load,
    local_operator,
    operator_name,
    print_json,
    setup_logging,
    spooled_bundle,
)
from dfir_ar.config.models import Config
from dfir_ar.errors import UsageError


def _exit_code(result: dict[str, object]) -> int:
    outcome = result.get("outcome")
    if outcome in ("ok", "refreshed", "already-active"):
        return 0
    if outcome == "refused":
        return 3
    return 5


def _describe(result: dict[str, object]) -> str:
    outcome = result.get("outcome")
    key = result.get("key")
    name = f"{result.get('command')} {key}" if key else str(result.get("command"))
    text = f"{name}: {outcome} (order {result.get('order_id')})"
    expires = result.get("expires_at")
    if isinstance(expires, float | int) and outcome in ("ok", "refreshed"):
        text += f", undone in {max(0.0, float(expires) - time.time()):.0f}s"
    elif outcome in ("ok", "refreshed") and result.get("action") != "collect":
        text += ", no timeout: stays until `dfir-ar blocks release`"
    details = result.get("details")
    if isinstance(details, dict) and details.get("bundle_id"):
        text += f", bundle {details['bundle_id']} ({details.get('status')})"
    if result.get("error"):
        text += f": {result['error']}"
    return text


@click.command()
@config_option
@click.argument("command")
@click.option("--local", is_flag=True, help="Run it on this host (through serve if it runs).")
@click.option("--agent", "agent", metavar="ID",
              help="Run it on one fleet agent (fleet mode: not available in this build).")
@click.option("--all", "all_agents", is_flag=True,
              help="Run it on every fleet agent (fleet mode: not available in this build).")
@click.option("--srcip", metavar="IP", help="The address to act on (IPv4 or IPv6).")
@click.option("--user", metavar="NAME", help="The account to act on.")
@click.option("--timeout", type=float, metavar="SECONDS",
              help="Undo after this many seconds (default: the command's binding timeout).")
@click.option("--wait", is_flag=True, help="Wait for the outcome; the exit code reflects it.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option("-v", "--verbose", count=True)
def run(
    config_file: Path | None,
    command: str,
    local: bool,
    agent: str | None,
    all_agents: bool,
    srcip: str | None,
    user: str | None,
    timeout: float | None,
    wait: bool,
    as_json: bool,
    verbose: int,
) -> None:
    """Run COMMAND (a configured [[command]]) by hand.

    \b
    Examples:
      dfir-ar run host-deny --local --srcip 203.0.113.7 --timeout 600 --wait
      dfir-ar run pcap-attacker --local --srcip 203.0.113.7 --wait

    The order goes to the running `dfir-ar serve` over its control socket. With no serve
    running it executes here, in this process, with the same ledger; its undo is then done by
    the next `dfir-ar serve` (a warning says so). Exit codes with --wait: 0 done, 3 refused,
    5 failed.
    """
    setup_logging(verbose)
    if agent is not None or all_agents:
        raise UsageError(
            "fleet mode (--agent/--all) is not available in this build: there is no fleet "
            "transport yet; use --local on the host itself"
        )
    if not local:
        raise UsageError("say where to run it: --local (this host)")
    loaded = load(config_file)
    config = loaded.config
    from dfir_ar.control import ServeNotRunning, manual_order, request

    operator = operator_name()
    # Validate here first: a bad value is reported without touching serve or the ledger.
    manual_order(config, command, srcip=srcip, user=user, timeout=timeout, operator=operator)
    message = {"op": "run", "command": command, "srcip": srcip, "user": user,
               "timeout": timeout, "wait": wait, "operator": operator}
    try:
        response = request(config.global_.socket_path, message, timeout=None if wait else 30.0)
    except ServeNotRunning:
        result = _run_in_process(config, command, srcip, user, timeout, local_operator())
        _print(result, as_json)
        _say_if_in_spool(config, result, as_json)
        sys.exit(_exit_code(result))
    if "result" not in response:
        if not response.get("ok"):
            code = response.get("exit_code")
            error = str(response.get("error") or "serve refused the request")
            if error.startswith(f"no [[command]] named {command!r}"):
                # This process found the command in the file; serve did not: it still runs
                # the config it read when it started (there is no reload).
                error = (f"the running serve has no [[command]] named {command!r}, but "
                         f"{loaded.path} has one: serve runs an older config (it reads the "
                         "file only at start); restart serve to apply config changes")
            click.echo(f"dfir-ar: error: {error}", err=True)
            sys.exit(code if isinstance(code, int) and 0 < code < 100 else 1)
        if as_json:
            print_json(response)
        else:
            click.echo(f"accepted by serve: order {response.get('order_id')}")
        return
    result = response["result"]
    _print(result, as_json)
    sys.exit(_exit_code(result) if wait or result.get("outcome") == "refused" else 0)


def _print(result: dict[str, object], as_json: bool) -> None:
    if as_json:
        print_json(result)
    else:
        click.echo(_describe(result))


def _say_if_in_spool(config: Config, result: dict[str, object], as_json: bool) -> None:
    """Run here (no serve), a collection's bundle is sealed in the spool and nobody uploads
    it until `dfir-ar bundles push` or the next serve: say so, or `bundles get ID` looks lost."""
    details = result.get("details")
    bundle_id = details.get("bundle_id") if isinstance(details, dict) else None
    if not isinstance(bundle_id, str):
        return
    path = spooled_bundle(config, bundle_id)
    if path is None:
        return
    click.echo(
        f"{'dfir-ar: note: ' if as_json else '  '}bundle {bundle_id} is sealed in the spool "
        f"({path.parent}), not uploaded yet: run `dfir-ar bundles push` (a running serve "
        "uploads it by itself)",
        err=as_json,
    )


def _run_in_process(
    config: Config, command: str, srcip: str | None, user: str | None,
    timeout: float | None, operator: str,
) -> dict[str, object]:
    from dfir_ar.control import manual_order
    from dfir_ar.executor import Executor, protected_networks
    from dfir_ar.ledger import Ledger, StateLock

    order = manual_order(config, command, srcip=srcip, user=user, timeout=timeout,
                         operator=operator)
    lock = StateLock(config.global_.state_dir).acquire(f"run {command}")
    try:
        # After the lock: a run that cannot take it (not root, another process) says only why.
        click.echo(
            "dfir-ar: warning: no dfir-ar serve is running; executing here. Any timeout is "
            "recorded in the ledger and the undo is run by the next `dfir-ar serve`.",
            err=True,
        )
        ledger = Ledger.open(config.global_.state_dir)
        executor = Executor(config, ledger, protected=protected_networks(config))
        try:
            outcome = executor.submit(order).result()
        finally:
            executor.shutdown(lift=False)
            ledger.close()
    finally:
        lock.release()
    return outcome.as_dict()
