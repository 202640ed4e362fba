"""`dfir-ar blocks list|release`: the ledger of active stateful responses (neither OSSEC nor
Wazuh can list or undo one: Wazuh #1491, #9425)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import click

from dfir_ar.cli.common import config_option, json_option, load, print_json, print_table


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = int(seconds)
    if seconds <= 0:
        return "due now"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return " ".join(parts[:2])


@click.group()
def blocks() -> None:
    """List or release active stateful responses (blocks, denied hosts, disabled accounts).

    \b
      dfir-ar blocks list [--json]
      dfir-ar blocks release 203.0.113.7
      dfir-ar blocks release 01JD3K...           (an order id)
      dfir-ar blocks release alice --command disable-account
    """


@blocks.command("list")
@config_option
@json_option
def list_blocks(config_file: Path | None, as_json: bool) -> None:
    """What is in place now, from the ledger (read-only; safe while serve runs)."""
    from dfir_ar.ledger import LedgerView

    config = load(config_file, check_plugins=False).config
    state_dir = config.global_.state_dir
    if not (state_dir / "ledger.sqlite3").exists():
        entries = []
    else:
        view = LedgerView.open(state_dir)
        try:
            entries = view.entries()
        finally:
            view.close()
    now = time.time()
    if as_json:
        print_json([e.as_dict(now) for e in entries])
        return
    rows = [
        (
            e.command,
            e.key,
            e.agent_id,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.applied_at or e.created_at)),
            _ago(e.remaining(now)),
            e.offences,
            e.order_id,
            "" if e.status == "applied" else e.status,
        )
        for e in entries
    ]
    print_table(
        ["COMMAND", "KEY", "AGENT", "SINCE", "EXPIRES IN", "OFFENCES", "ORDER", "STATE"],
        rows,
        empty="nothing is blocked (the ledger is empty)",
        # What an operator copies into `blocks release` or `run` is never cut; STATE says only
        # an intent not yet applied (in flight, or left by a crash): shown when there is one.
        whole=("COMMAND", "KEY", "ORDER"),
        optional=("STATE",),
    )


_LOOKS_LIKE_ADDRESS = re.compile(r"[0-9]+(\.[0-9]+)+")


def _release_key(value: str) -> str:
    """An address in the form the ledger keys it by (as `run --srcip` stores it:
    ``2001:0db8:0::7`` -> ``2001:db8::7``); a user name or an order id as given.

    A value with ':' (no user name, order id or plain file name has one) or made of dotted
    numbers is an address, and one that does not parse is a usage error with the reason.
    """
    from dfir_ar.errors import DfirArError, UsageError
    from dfir_ar.validate import parse_ip

    if "/" in value or not (":" in value or _LOOKS_LIKE_ADDRESS.fullmatch(value)):
        return value
    try:
        return str(parse_ip(value))
    except DfirArError as exc:
        reason = str(exc).removeprefix("srcip ")
        raise UsageError(f"address {reason}") from None


@blocks.command("release")
@config_option
@click.argument("key_or_order_id")
@click.option("--command", "command", metavar="NAME", help="Only entries of this command.")
@json_option
def release(config_file: Path | None, key_or_order_id: str, command: str | None,
            as_json: bool) -> None:
    """Undo now the response(s) whose key (address, user) or order id is KEY_OR_ORDER_ID.

    An address is matched in its canonical form, whatever way it is written (2001:0db8:0::7 is
    2001:db8::7). Exit status: 0 released, 2 nothing matches (or a bad value), 5 an undo failed.
    """
    from dfir_ar.cli.common import local_operator, operator_name
    from dfir_ar.control import ServeNotRunning, request
    from dfir_ar.errors import UsageError

    config = load(config_file).config
    if len(key_or_order_id) > 256 or not key_or_order_id.strip():
        raise UsageError("KEY_OR_ORDER_ID must be an address, a user name or an order id")
    key = _release_key(key_or_order_id)
    try:
        response = request(
            config.global_.socket_path,
            # serve records the operator as "NAME (uid U, pid P)" from the kernel's peer
            # credentials, as for `dfir-ar run`.
            {"op": "release", "key": key, "command": command, "operator": operator_name()},
            timeout=None,
        )
        if "results" not in response:
            raise UsageError(str(response.get("error") or "serve refused the request"))
        results = list(response["results"])
    except ServeNotRunning:
        from dfir_ar.executor import Executor, protected_networks
        from dfir_ar.ledger import Ledger, StateLock

        lock = StateLock(config.global_.state_dir).acquire("blocks release")
        try:
            ledger = Ledger.open(config.global_.state_dir)
            executor = Executor(config, ledger, protected=protected_networks(config))
            try:
                results = [r.as_dict() for r in executor.release(key, command,
                                                                 operator=local_operator())]
            finally:
                executor.shutdown(lift=False)
                ledger.close()
        finally:
            lock.release()
    if as_json:
        print_json(results)
    if not results:
        shown = repr(key) if key == key_or_order_id else f"{key_or_order_id!r} (that is, {key})"
        click.echo(f"dfir-ar: error: nothing in the ledger matches {shown}"
                   + (f" for command {command!r}" if command else "")
                   + "; `dfir-ar blocks list` shows what is in place", err=True)
        sys.exit(UsageError.exit_code)
    failed = [r for r in results if r.get("outcome") != "ok"]
    if not as_json:
        for r in results:
            state = "released" if r.get("outcome") == "ok" else f"FAILED: {r.get('error')}"
            click.echo(f"{r.get('command')} {r.get('key')}: {state}")
    sys.exit(5 if failed else 0)
