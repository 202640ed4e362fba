"""``dfir-ar wazuh-ar``: be a Wazuh active-response executable.

Installed under a Wazuh agent's ``active-response/bin/`` (a symlink to ``dfir-ar`` named after the
plug-in, e.g. ``dfir-ar-firewall-drop``), it reads execd's JSON message on stdin, answers the
``check_keys`` handshake for a stateful responder, runs ``add`` (saving the responder's state) or
``delete`` (restoring with that state), and for a collector seals an evidence bundle and uploads
it. stdout carries only protocol messages; people read stderr and ``active-responses.log``.

Which plug-in: ``--plugin NAME``, else ``--plugin NAME`` in the command's ``extra_args``, else the
name this program was invoked as (``dfir-ar-NAME`` or ``NAME``; ``dfir-ar-wazuh-ar`` names none).

Better than a stock Wazuh script: every alert field is parsed (srcip with the standard library,
the user name strictly) and a wrong one refuses the run; the white list, loopback, the host's own
addresses and gateways are never contained; the handshake answer has a deadline; the state that
undoes the action survives restarts (``<state_dir>/wazuh-ar/<plugin>/<sha256(key)>.json``); a
collector detaches so execd, which runs one script at a time, is not blocked for the capture.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from dfir_ar import wazuh_protocol
from dfir_ar.cli.common import config_option
from dfir_ar.errors import (
    DeadlineExceeded,
    DfirArError,
    InvalidArgument,
    Refused,
    RefusedInput,
    UsageError,
)

if TYPE_CHECKING:
    from dfir_ar.alert import Alert
    from dfir_ar.arlog import ActiveResponseLog, AuditLog, AuditRecord
    from dfir_ar.config.models import Config
    from dfir_ar.registry import Registry
    from dfir_ar.responder import Request, Responder, Target

log = logging.getLogger("dfir_ar.wazuh_ar")

LINK_PREFIX = "dfir-ar-"
GENERIC_LINK = "dfir-ar-wazuh-ar"
"""A link with this name runs the plug-in named by ``--plugin NAME`` in extra_args."""
DEFAULT_WAZUH_LOGS = Path("/var/ossec/logs")
STATE_SUBDIR = "wazuh-ar"
_NOT_LINKS = frozenset({"dfir-ar", "dfir_ar", "__main__.py", "main.py", "wazuh_ar.py"})


# -- invocation ------------------------------------------------------------------------------


def plugin_from_name(name: str) -> str | None:
    """The plug-in a program name stands for (``dfir-ar-firewall-drop`` -> ``firewall-drop``)."""
    base = os.path.basename(name)
    if base == GENERIC_LINK or base in _NOT_LINKS or base.startswith("python") or base.startswith("pytest"):
        return None
    if base.startswith(LINK_PREFIX) and len(base) > len(LINK_PREFIX):
        return base[len(LINK_PREFIX) :]
    from dfir_ar.registry import plugin_names

    return base if base in plugin_names() else None


def link_main(argv: Sequence[str]) -> None:
    """Called by ``dfir_ar.cli.main.main`` first: if this process was exec'ed through a symlink
    named after a plug-in, run as ``dfir-ar wazuh-ar --plugin NAME`` and exit; else return."""
    if not argv:
        return
    base = os.path.basename(argv[0])
    if base != GENERIC_LINK and plugin_from_name(argv[0]) is None:
        return
    # The name is only the default: --plugin in extra_args still wins (see run_wazuh_ar).
    wazuh_ar.main(
        args=["--invoked-as", argv[0], *argv[1:]],
        prog_name=os.path.basename(argv[0]),
        standalone_mode=True,
    )


def wazuh_home_logs(invoked_as: str) -> Path:
    """Wazuh's ``logs/`` for a program under ``<home>/active-response/bin/`` (what w_homedir()
    derives from argv[0]); /var/ossec/logs otherwise."""
    path = Path(os.path.abspath(invoked_as))  # not resolve(): the symlink's place is the point
    if path.parent.name == "bin" and path.parent.parent.name == "active-response":
        return path.parent.parent.parent / "logs"
    return DEFAULT_WAZUH_LOGS


# -- pure parts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnArgs:
    """The extra_args wazuh-ar itself takes (the rest goes to the plug-in)."""

    plugin: str | None = None
    timeout: float | None = None
    """Seconds for backends with kernel expiry (firewall-drop): the block lapses by itself even
    if execd dies and never sends the delete (execd keeps its timers in memory only)."""
    rest: tuple[str, ...] = ()


MAX_TIMEOUT = 10 * 365 * 86400.0


def split_own_args(extra_args: Sequence[str]) -> OwnArgs:
    """``--plugin NAME`` and ``--timeout SECONDS`` (also ``--name=value``) out of extra_args."""
    rest: list[str] = []
    found: dict[str, str] = {}
    i = 0
    args = list(extra_args)
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name not in ("--plugin", "--timeout"):
            rest.append(args[i])
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise InvalidArgument(f"extra_args: {name} needs a value")
            value = args[i + 1]
            i += 1
        found[name] = value
        i += 1
    timeout: float | None = None
    if "--timeout" in found:
        try:
            timeout = float(found["--timeout"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= MAX_TIMEOUT:
            raise InvalidArgument(
                f"extra_args: --timeout {found['--timeout']!r} is not a number of seconds "
                f"between 0 and {MAX_TIMEOUT:.0f}"
            )
    return OwnArgs(plugin=found.get("--plugin"), timeout=timeout, rest=tuple(rest))


OSSEC_FIELDS = ("user", "srcip", "alert_id", "rule_id", "location", "filename")


def message_from_ossec_argv(args: Sequence[str], program: str) -> wazuh_protocol.Message:
    """The message equivalent of an OSSEC (or Wazuh < 4.2) call:
    ``add|delete <user> <srcip> <alert_id> <rule_id> <location> <filename> [extra_args...]``,
    ``-`` for a missing value. The values are parsed later, exactly like the JSON ones."""
    if not args or args[0] not in wazuh_protocol.INPUT_COMMANDS:
        raise UsageError(
            f"unexpected arguments {list(args)[:3]!r}: OSSEC calls scripts with "
            "add|delete user srcip alert_id rule_id location filename"
        )
    values = [*args[1:7], *(["-"] * max(0, 7 - len(args)))]
    got = {k: (None if v in ("-", "") else v) for k, v in zip(OSSEC_FIELDS, values, strict=True)}
    data = {
        name: got[field_]
        for name, field_ in (("srcip", "srcip"), ("dstuser", "user"), ("filename", "filename"))
        if got[field_] is not None
    }
    alert: dict[str, Any] = {"data": data}
    if got["alert_id"] is not None:
        alert["id"] = got["alert_id"]
    if got["rule_id"] is not None:
        # OSSEC passes no level; 0 is "unknown" here (the rule already fired on the manager).
        alert["rule"] = {"id": got["rule_id"], "level": 0}
    if got["location"] is not None:
        alert["location"] = got["location"]
    return wazuh_protocol.execd_message(
        args[0], alert=alert, extra_args=list(args[7:]), program=program, node="ossec-execd"
    )


def state_path(state_dir: Path, plugin: str, key: str) -> Path:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return state_dir / STATE_SUBDIR / plugin / f"{digest}.json"


def build_target(alert: dict[str, Any], expects: Sequence[str]) -> tuple[Target, list[str]]:
    """The validated Target from ``alert.data`` (srcip, dstuser, filename), where Wazuh's own
    scripts read them. An expected field that is missing or does not parse refuses the run; an
    unexpected one that does not parse is dropped (and reported in the returned notes)."""
    from dfir_ar.responder import Target
    from dfir_ar.validate import parse_ip, parse_username

    data = wazuh_protocol.alert_data(alert)
    notes: list[str] = []
    values: dict[str, Any] = {}
    raw_user = data.get("dstuser")
    if raw_user is None and "srcuser" in data and "username" in expects:
        raw_user = data.get("srcuser")
    fields: list[tuple[str, object, Any]] = [
        ("srcip", data.get("srcip"), parse_ip),
        ("username", raw_user, parse_username),
        ("filename", data.get("filename"), _parse_filename),
    ]
    for name, raw, parse in fields:
        if raw is None or raw == "":
            if name in expects:
                source = {"srcip": "data.srcip", "username": "data.dstuser"}.get(name, "data." + name)
                raise InvalidArgument(f"the alert has no {source}, which this plug-in needs")
            continue
        try:
            values[name] = parse(raw)
        except RefusedInput as exc:
            if name in expects:
                raise
            notes.append(f"ignored {name}: {exc}")
    return Target(**values), notes


def _parse_filename(value: object) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or len(value) > 4096
        or not value.isprintable()
    ):
        raise InvalidArgument(f"filename {str(value)[:60]!r} is not an absolute printable path")
    return value


def alert_from_message(alert: dict[str, Any]) -> Alert:
    """An Alert for the order and manifest; a manual run (Wazuh API) carries only ``data``."""
    from dfir_ar.alert import Alert
    from dfir_ar.parsers import alert_from_wazuh

    if isinstance(alert.get("rule"), dict):
        return alert_from_wazuh(alert)
    data = wazuh_protocol.alert_data(alert)

    def text(value: object) -> str | None:
        return value if isinstance(value, str) else None

    return Alert(
        rule_id=0,
        level=0,
        srcip=text(data.get("srcip")),
        dstuser=text(data.get("dstuser")),
        srcuser=text(data.get("srcuser")),
        filename=text(data.get("filename")),
        raw=alert,
    )


# -- I/O -------------------------------------------------------------------------------------


@dataclass
class Logs:
    """active-responses.log (Wazuh format) and audit.jsonl, each only where writable."""

    program: str
    ar: ActiveResponseLog | None = None
    audit: AuditLog | None = None
    lines: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, program: str, ar_dir: Path | None, audit_dir: Path | None) -> Logs:
        from dfir_ar.arlog import ActiveResponseLog, AuditLog

        logs = cls(program=program)
        if ar_dir is not None and _writable_dir(ar_dir):
            with contextlib.suppress(DfirArError):
                logs.ar = ActiveResponseLog(ar_dir)
        if audit_dir is not None and _writable_dir(audit_dir):
            with contextlib.suppress(DfirArError):
                logs.audit = AuditLog(audit_dir)
        return logs

    def write(self, *messages: str) -> None:
        self.lines.extend(messages)
        if self.ar is not None:
            try:
                self.ar.write(time.time(), self.program, *messages)
            except (OSError, DfirArError) as exc:
                click.echo(f"dfir-ar wazuh-ar: cannot write {self.ar.path}: {exc}", err=True)
                self.ar = None

    def record(self, record: AuditRecord) -> None:
        if self.audit is not None:
            try:
                self.audit.write(record)
            except (OSError, DfirArError) as exc:
                click.echo(f"dfir-ar wazuh-ar: cannot write {self.audit.path}: {exc}", err=True)


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(data, sort_keys=True).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise Refused(f"saved state {path} is unreadable: {exc}") from None
    return data if isinstance(data, dict) else None


@dataclass
class Run:
    """One wazuh-ar execution: its options, streams and logs."""

    config: Config
    registry: Registry
    plugin: str
    message: wazuh_protocol.Message
    extra_args: list[str]
    timeout: float | None
    logs: Logs
    reader: wazuh_protocol.FdLineReader
    """stdin; one reader for the whole run, so a line already buffered is never lost."""
    stdout: IO[bytes]
    handshake_timeout: float
    foreground: bool
    upload: bool
    handshake: bool = True
    """False for OSSEC's argv protocol: its execd does its own dedup and reads no stdout."""
    request: Request | None = None
    """The validated request, once built (the audit record reads it)."""
    key: str | None = None

    def send(self, message: wazuh_protocol.Message) -> None:
        self.stdout.write(wazuh_protocol.encode(message))
        self.stdout.flush()


def load_config_for(config_file: Path | None, state_dir: Path | None) -> Config:
    """The config a Wazuh agent may not have: -c, $DFIR_AR_CONFIG, /etc/dfir-ar/dfir-ar.toml,
    else built-in defaults (a plain Wazuh agent needs nothing else to run a responder)."""
    from dfir_ar.config import config_path, load_config
    from dfir_ar.config.models import Config

    path = config_path(config_file)
    if config_file is None and "DFIR_AR_CONFIG" not in os.environ and not path.exists():
        config = Config()
    else:
        config = load_config(path, check_plugins=False).config
    if state_dir is not None:
        config = config.model_copy(
            update={"global_": config.global_.model_copy(update={"state_dir": state_dir})}
        )
    return config


def protected_networks(config: Config) -> list[Any]:
    from dfir_ar.rails import host_protected_networks
    from dfir_ar.validate import parse_network

    nets = [parse_network(n) for n in config.global_.white_list]
    nets.extend(
        host_protected_networks(
            own=config.global_.protect_own_addresses, gateways=config.global_.protect_gateway
        )
    )
    return nets


def execute(run: Run) -> str:
    """Run the message; returns the outcome word for the audit record."""
    info = run.registry.get(run.plugin)
    if info is None:
        from dfir_ar.config.load import suggest
        from dfir_ar.registry import plugin_names

        hint = suggest(run.plugin, plugin_names())
        raise UsageError(f"no dfir-ar plug-in named {run.plugin!r}{hint}")
    if info.kind == "collector":
        return _collect(run)
    return _respond(run)


def _request(run: Run, expects: Sequence[str]) -> tuple[Request, Alert]:
    from dfir_ar.ids import new_id
    from dfir_ar.responder import Request

    alert_raw = run.message.parameters.alert
    target, notes = build_target(alert_raw, expects)
    for note in notes:
        log.warning("%s: %s", run.plugin, note)
    alert = alert_from_message(alert_raw)
    request = Request(
        command=run.plugin,
        target=target,
        order_id=new_id(),
        # execd owns the timer and runs the delete; --timeout adds a kernel-side expiry.
        timeout=run.timeout,
        extra_args=tuple(run.extra_args),
        alert=alert,
    )
    run.request = request
    return request, alert


def _respond(run: Run) -> str:
    from dfir_ar.rails import WhiteList
    from dfir_ar.responder import ResponderContext

    cls = run.registry.responder(run.plugin)
    request, _ = _request(run, [str(a) for a in cls.expects])
    nets = protected_networks(run.config)
    ip = request.target.srcip
    # Only an add is refused: an undo must still run if the white list grew after the add.
    if ip is not None and "srcip" in cls.expects and run.message.command == "add":
        covering = WhiteList(nets).covering(ip)
        if covering is not None:
            raise Refused(f"{ip} is white-listed or protected ({covering}); nothing done")
    responder: Responder = cls(
        ResponderContext(
            state_dir=run.config.global_.state_dir,
            white_list=nets,
            options=run.config.responders.get(run.plugin, {}),
            log=logging.getLogger(f"dfir_ar.responder.{run.plugin}"),
        )
    )
    key = responder.key(request)
    run.key = key
    path = state_path(run.config.global_.state_dir, run.plugin, key)
    if run.message.command == "delete":
        saved = _read_state(path)
        state = saved.get("state", {}) if saved else {}
        if saved is None:
            log.warning("%s: no saved state for %s; deleting without it", run.plugin, key)
        with _deadline(run):
            responder.delete(request, state if isinstance(state, dict) else {})
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        run.logs.write("Ended")
        return "ok"

    if run.handshake and _handshake(run, key) == "abort":
        run.logs.write("Aborted")
        return "already-active"

    saved = _read_state(path)
    present = responder.active()
    if saved is not None and present is not None and key in present:
        # execd forgot (restart) but the action and its undo state are still here: keep the
        # original state, so the undo restores what was there before the first add.
        responder.refresh(request, saved.get("state", {}), None)
        run.logs.write("Ended")
        return "ok"
    with _deadline(run):
        state = responder.add(request)
    _write_json_atomic(
        path,
        {
            "plugin": run.plugin,
            "key": key,
            "state": state,
            "added_at": time.time(),
            "order_id": request.order_id,
            "target": {
                "srcip": str(request.target.srcip) if request.target.srcip else None,
                "username": request.target.username,
                "filename": request.target.filename,
            },
        },
    )
    run.logs.write("Ended")
    return "ok"


def _handshake(run: Run, key: str) -> str:
    """Send check_keys and wait (bounded) for execd's answer: "continue" or "abort"."""
    check = wazuh_protocol.check_keys_message(run.logs.program, [key])
    run.send(check)
    run.logs.write(wazuh_protocol.encode(check).decode("utf-8").strip())
    try:
        line = run.reader.readline(time.monotonic() + run.handshake_timeout, "check_keys answer from execd")
    except DeadlineExceeded:
        raise DeadlineExceeded(
            f"execd did not answer check_keys within {run.handshake_timeout:g}s; nothing done"
        ) from None
    if line is None:
        raise InvalidArgument("stdin closed before execd answered check_keys; nothing done")
    answer = wazuh_protocol.parse_message(line, expect=wazuh_protocol.ANSWERS)
    return answer.command


def _deadline(run: Run) -> contextlib.AbstractContextManager[None]:
    """Every subprocess of one add/delete ends by [global] execution_deadline (group killed)."""
    from dfir_ar import procs

    return procs.deadline_scope(time.monotonic() + run.config.global_.execution_deadline)


def _collect(run: Run) -> str:
    if run.message.command != "add":
        # A collection has nothing to undo; execd may still send delete if timeout_allowed.
        run.logs.write("Ended")
        return "ok"
    from dfir_ar.collector import CollectJob, CollectorContext
    from dfir_ar.evidence.collect import run_collection
    from dfir_ar.evidence.manifest import Trigger
    from dfir_ar.order import Order

    cls = run.registry.collector(run.plugin)
    request, alert = _request(run, [str(a) for a in cls.expects])
    options = cls.parse_options(request.extra_args)
    duration = float(options.get("duration", cls.default_duration) or cls.default_duration)
    order = Order(
        id=request.order_id,
        command=run.plugin,
        target=request.target,
        extra_args=request.extra_args,
        alert=alert,
    )
    if not run.foreground:
        child = _detach()
        if child:
            run.logs.write(f"Detached: collection {order.id} continues in process {child}")
            return "detached"
    collector = cls(
        CollectorContext(
            state_dir=run.config.global_.state_dir,
            settings=run.config.collectors.get(run.plugin, {}),
            log=logging.getLogger(f"dfir_ar.collector.{run.plugin}"),
        )
    )
    budget = duration + 60.0
    job = CollectJob(
        target=request.target,
        options=options,
        deadline=time.monotonic() + budget,
        max_bytes=run.config.evidence.max_bundle_mb * 1024 * 1024,
        order_id=order.id,
    )
    bundle = run_collection(collector, job, trigger=Trigger.from_order(order), config=run.config)
    run.logs.write(f"Bundle {bundle.bundle_id} sealed ({bundle.status})")
    click.echo(f"dfir-ar wazuh-ar: bundle {bundle.bundle_id} ({bundle.status})", err=True)
    if run.upload:
        from dfir_ar.evidence.spool import Uploader

        try:
            uploaded = Uploader(run.config).drain_once()
        except DfirArError as exc:
            # The bundle stays in the spool; the next run or `dfir-ar serve` uploads it.
            run.logs.write(f"Upload deferred: {exc}")
            click.echo(f"dfir-ar wazuh-ar: upload deferred, bundle kept in spool: {exc}", err=True)
        else:
            run.logs.write(f"Uploaded {uploaded} bundle(s)")
    run.logs.write("Ended")
    return "ok" if str(bundle.status) != "failed" else "failed"


def _detach() -> int:
    """Fork; the parent gets the child's pid at once (execd runs one script at a time and waits
    for it), the child leaves the session, drops execd's pipes and gets 0 to do the work."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        return pid
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return 0


# -- the command -----------------------------------------------------------------------------


@click.command("wazuh-ar")
@config_option
@click.option(
    "--plugin",
    "plugin_opt",
    metavar="NAME",
    help="Responder or collector to run (default: from extra_args --plugin NAME, "
    "else the name this program was invoked as, e.g. dfir-ar-firewall-drop).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where add() saves what delete() needs (default: [global] state_dir).",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of active-responses.log (default: the Wazuh logs/ beside "
    "active-response/bin/, else /var/ossec/logs; skipped if not writable).",
)
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for execd's continue/abort answer; no answer: nothing is done.",
)
@click.option(
    "--input-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the JSON message on stdin.",
)
@click.option(
    "--foreground",
    is_flag=True,
    help="Run a collection in this process instead of detaching from execd.",
)
@click.option("--no-upload", is_flag=True, help="Leave a sealed bundle in the spool.")
@click.option("--invoked-as", hidden=True, default=None)
@click.argument("ossec_args", nargs=-1, metavar="[add|delete USER SRCIP ALERT_ID RULE_ID LOCATION FILENAME]")
def wazuh_ar(
    config_file: Path | None,
    plugin_opt: str | None,
    state_dir: Path | None,
    log_dir: Path | None,
    handshake_timeout: float,
    input_timeout: float,
    foreground: bool,
    no_upload: bool,
    invoked_as: str | None,
    ossec_args: tuple[str, ...],
) -> None:
    """Act as a Wazuh active-response executable (JSON on stdin, check_keys on stdout).

    \b
    Install (on the agent):
      ln -s "$(command -v dfir-ar)" /var/ossec/active-response/bin/dfir-ar-firewall-drop
    and in ossec.conf:
      <command><name>dfir-firewall-drop</name>
        <executable>dfir-ar-firewall-drop</executable>
        <timeout_allowed>yes</timeout_allowed></command>
    See examples/wazuh/README.md for every plug-in.

    With positional arguments it speaks OSSEC's (and Wazuh < 4.2's) argv protocol instead:
    `add|delete user srcip alert_id rule_id location filename`, "-" for a missing value, no
    handshake (OSSEC's execd dedups itself).

    \b
    By hand (what execd sends, then execd's "continue" to the check_keys it gets back):
      printf '%s\\n' \\
        '{"version":1,"command":"add","parameters":{"alert":{"data":{"srcip":"203.0.113.7"}}}}' \\
        '{"version":1,"command":"continue","parameters":{}}' | dfir-ar wazuh-ar --plugin host-deny
    """
    invoked = invoked_as or (sys.argv[0] if sys.argv else "dfir-ar")
    code = run_wazuh_ar(
        config_file=config_file,
        plugin_opt=plugin_opt,
        state_dir=state_dir,
        log_dir=log_dir,
        handshake_timeout=handshake_timeout,
        input_timeout=input_timeout,
        foreground=foreground,
        upload=not no_upload,
        invoked_as=invoked,
        ossec_args=ossec_args,
    )
    sys.exit(code)


def run_wazuh_ar(
    *,
    config_file: Path | None,
    plugin_opt: str | None,
    state_dir: Path | None,
    log_dir: Path | None,
    handshake_timeout: float,
    input_timeout: float,
    foreground: bool,
    upload: bool,
    invoked_as: str,
    ossec_args: Sequence[str] = (),
    stdin_fd: int = 0,
    stdout: IO[bytes] | None = None,
) -> int:
    """The whole run; returns the exit status (0: done or aborted by execd)."""
    from dfir_ar.arlog import AuditRecord
    from dfir_ar.registry import load_only

    start = time.monotonic()
    fallback = plugin_opt or plugin_from_name(invoked_as) or "dfir-ar"
    logs = Logs(program=f"{LINK_PREFIX}{fallback}" if fallback != "dfir-ar" else fallback)
    message: wazuh_protocol.Message | None = None
    plugin = fallback
    outcome = "failed"
    error: str | None = None
    exit_code = 0
    run: Run | None = None
    try:
        config = load_config_for(config_file, state_dir)
        reader = wazuh_protocol.FdLineReader(stdin_fd)
        if ossec_args:
            base = os.path.basename(invoked_as)
            linked = base == GENERIC_LINK or plugin_from_name(base) is not None
            message = message_from_ossec_argv(
                ossec_args, f"active-response/bin/{base}" if linked else ""
            )
        else:
            message = _read_message(reader, input_timeout)
        own = split_own_args(message.parameters.extra_args)
        chosen = plugin_opt or own.plugin or plugin_from_name(invoked_as)
        if not chosen:
            raise UsageError(
                "cannot tell which plug-in to run: pass --plugin NAME, put --plugin NAME in the "
                "command's extra_args, or install this program as dfir-ar-NAME"
            )
        plugin = chosen
        program = os.path.basename(message.parameters.program) or f"{LINK_PREFIX}{plugin}"
        logs = Logs.open(
            program if _is_program_name(program) else f"{LINK_PREFIX}{plugin}",
            log_dir or wazuh_home_logs(invoked_as),
            config.global_.log_dir,
        )
        logs.write("Starting", wazuh_protocol.encode(message).decode("utf-8").strip())
        run = Run(
            config=config,
            registry=load_only(plugin),
            plugin=plugin,
            message=message,
            extra_args=list(own.rest),
            timeout=own.timeout,
            logs=logs,
            reader=reader,
            stdout=stdout or sys.stdout.buffer,
            handshake_timeout=handshake_timeout,
            foreground=foreground,
            upload=upload,
            handshake=not ossec_args,
        )
        outcome = execute(run)
        if outcome == "detached":
            return 0
    except DfirArError as exc:
        outcome = "refused" if isinstance(exc, Refused | RefusedInput) else "failed"
        if isinstance(exc, DeadlineExceeded):
            outcome = "timeout"
        error = str(exc)
        exit_code = exc.exit_code
        logs.write(f"Error: {exc}", "Aborted")
        click.echo(f"dfir-ar wazuh-ar: {plugin}: {exc}", err=True)
    request = run.request if run is not None else None
    alert = request.alert if request is not None else None
    logs.record(
        AuditRecord(
            time=time.time(),
            order_id=request.order_id if request is not None else "",
            command=plugin,
            action=message.command if message is not None else "unknown",
            key=run.key if run is not None else None,
            outcome=outcome,
            duration=time.monotonic() - start,
            exit_status=exit_code,
            error=error,
            srcip=str(request.target.srcip) if request and request.target.srcip else None,
            username=request.target.username if request is not None else None,
            alert_id=alert.id if alert is not None else None,
            rule_id=alert.rule_id if alert is not None and alert.rule_id else None,
            details={"via": "wazuh-ar"},
        )
    )
    return exit_code


def _read_message(reader: wazuh_protocol.FdLineReader, timeout: float) -> wazuh_protocol.Message:
    try:
        line = reader.readline(time.monotonic() + timeout, "Wazuh message on stdin")
    except DeadlineExceeded:
        raise InvalidArgument(
            f"no message on stdin within {timeout:g}s (execd writes one JSON line)"
        ) from None
    if line is None:
        raise InvalidArgument("stdin is empty; execd writes one JSON line")
    return wazuh_protocol.parse_message(line, expect=wazuh_protocol.INPUT_COMMANDS)


def _is_program_name(name: str) -> bool:
    return bool(name) and len(name) <= 128 and all(c.isalnum() or c in "._-" for c in name)


__all__ = ["link_main", "plugin_from_name", "run_wazuh_ar", "wazuh_ar"]
