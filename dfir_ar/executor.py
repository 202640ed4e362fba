"""The agent-side executor: turns Orders into responder/collector executions, durably.

Flow of one order (``accept``):

1. resolve the command's plug-in (API-registered, entry point, or an external script in
   ``active_response_dir``), build the Request and its dedup key;
2. re-check the rails on this side (defence in depth): a protected address is never contained,
   the global cap and the per-command rate limit apply to new executions;
3. in ONE ledger transaction, with the source cursor of the alert if there is one: a new key gets
   an *intent* row, a repeat refreshes the timer and escalates (repeated_offenders, decaying
   counters), a collection gets a job row;
4. after commit the work runs on a bounded pool, each execution under a deadline (child processes
   started through dfir_ar.procs are killed as a group at it), writing the Wazuh
   ``active-responses.log`` lines and one JSON audit record; the intent is marked applied after.

Deadlines: a child process started through dfir_ar.procs inside an execution is killed with its
process group at the execution's deadline. A plug-in's own Python code cannot be interrupted;
the built-in responders do their waiting in subprocesses for that reason.

Timeouts: the pure ``TimeoutTable`` holds the pending undos; ``run_timeouts`` is the only loop that
sleeps and wakes on the next deadline (or when an earlier one is scheduled), so an undo runs
within milliseconds of its deadline, not on a tick.

Crash recovery (``reconcile``): expired entries are undone at once; live ones are rescheduled and
handed to ``Responder.reconcile`` so drift is repaired; an intent never marked applied is RETRIED
(its alert's cursor was committed with it, so dropping it would lose the alert; every responder's
add is idempotent), unless it has expired meanwhile, in which case it is undone (delete is quiet
when the action is not there). Accepted collections that never finished are run again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import EllipsisType
from typing import TYPE_CHECKING, Any, overload

import msgspec
from msgspec import structs

from dfir_ar import codec, procs
from dfir_ar.arlog import ActiveResponseLog, AuditLog, AuditRecord, wazuh_message
from dfir_ar.clock import Clock, SystemClock
from dfir_ar.collector import Collector, CollectorContext
from dfir_ar.config.models import CommandConfig, Config
from dfir_ar.errors import DeadlineExceeded, DfirArError, PluginUnavailable, Refused, StateError
from dfir_ar.escalation import next_offence
from dfir_ar.keyed_locks import KeyedLocks
from dfir_ar.ledger import APPLIED, Entry, GroupCommitter, Ledger, Tx
from dfir_ar.order import Order
from dfir_ar.rails import RateLimiter, WhiteList, active_cap_allows, host_protected_networks
from dfir_ar.rawalert import RawAlert
from dfir_ar.registry import Registry, load_registry
from dfir_ar.responder import LiveEntry, Request, Responder, ResponderContext, State, Target
from dfir_ar.timeouts import TimeoutTable, wait_seconds
from dfir_ar.validate import IPNetwork

if TYPE_CHECKING:
    from dfir_ar.sources.base import Cursor

log = logging.getLogger("dfir_ar.executor")

Ident = tuple[str, str]
"""(command, key): what makes two orders the same action."""

#: A collector's deadline is its duration plus this margin for sealing the bundle.
COLLECT_MARGIN = 60.0
#: Seconds between retries of an undo that failed (the entry stays in the ledger meanwhile).
DELETE_RETRY = (5.0, 15.0, 60.0, 300.0)
#: The timeout loop re-reads the clock at least this often (wall-clock jumps).
TICK_CEILING = 5.0


class Result(msgspec.Struct, frozen=True, gc=False):
    """How one execution (or refusal) ended; what ``dfir-ar run --wait`` prints."""

    order_id: str
    command: str
    action: str
    key: str | None
    outcome: str
    """ok | failed | timeout | refused | already-active | refreshed"""
    error: str | None = None
    duration: float = 0.0
    expires_at: float | None = None
    offences: int = 0
    details: Mapping[str, Any] = msgspec.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "refreshed", "already-active")

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "command": self.command,
            "action": self.action,
            "key": self.key,
            "outcome": self.outcome,
            "error": self.error,
            "duration": round(self.duration, 6),
            "expires_at": self.expires_at,
            "offences": self.offences,
            "details": dict(self.details),
        }


_TICKET_LOCK = threading.Lock()


class Ticket:
    """The outcome of one order, resolved when its execution ends (a Future's result side).

    Not concurrent.futures.Future: that builds a Condition per instance and takes it on every
    set_result, paid for every alert although almost nobody waits (bench/engine). Here a waiter
    creates the Event it sleeps on; one module lock orders "done" against "someone waits".
    """

    __slots__ = ("_done", "_event", "_exc", "_result")

    def __init__(self) -> None:
        self._done = False
        self._result: Result | None = None
        self._exc: BaseException | None = None
        self._event: threading.Event | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Result) -> None:
        with _TICKET_LOCK:
            self._result, self._done, event = result, True, self._event
        if event is not None:
            event.set()

    def set_exception(self, exc: BaseException) -> None:
        with _TICKET_LOCK:
            self._exc, self._done, event = exc, True, self._event
        if event is not None:
            event.set()

    def _wait(self, timeout: float | None) -> None:
        if self._done:
            return
        with _TICKET_LOCK:
            if self._done:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if not event.wait(timeout):
            raise TimeoutError(f"no result within {timeout}s")

    def result(self, timeout: float | None = None) -> Result:
        """The Result; raises what the execution raised, or TimeoutError after ``timeout``."""
        self._wait(timeout)
        if self._exc is not None:
            raise self._exc
        assert self._result is not None
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._exc


@dataclass
class _Batch:
    """What one pool task's executions leave behind, written out together (see _run_chunk)."""

    started: float
    ar: list[bytes] = field(default_factory=list)
    audit: list[bytes] = field(default_factory=list)
    applied: list[tuple[str, str, str, dict[str, Any], float]] = field(default_factory=list)
    schedule: list[tuple[Ident, float]] = field(default_factory=list)
    done: list[tuple[Ticket, Result | BaseException]] = field(default_factory=list)


class _Missing:
    """Marks "not read yet" where None means "no such row"."""


_MISSING = _Missing()


class _Undo(msgspec.Struct):
    """A delete that ran (see Executor._undo): its result, and the row to retire if any."""

    result: Result
    entry: Entry | None = None
    cmd: CommandConfig | None = None


class _PendingUndo(msgspec.Struct):
    """A delete whose Starting lines are written and whose responder call is next."""

    ident: Ident
    reason: str
    entry: Entry
    plan: _Plan
    now: float
    cmd: CommandConfig
    request: Request
    responder: Responder


class _Plan(msgspec.Struct):
    kind: str  # add | refresh | collect | refused
    order: Order
    command: CommandConfig | None = None
    request: Request | None = None
    key: str | None = None
    expires_at: float | None = None
    timeout: float | None = None
    offences: int = 0
    reason: str = ""
    retry: bool = False
    """An intent recovered from the ledger: the row exists already."""
    ticket: Ticket = msgspec.field(default_factory=Ticket)


class Executor:
    """Runs orders on this host. Thread-safe; one per process (one ledger writer)."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        *,
        clock: Clock | None = None,
        protected: Sequence[IPNetwork] = (),
        ar_log: ActiveResponseLog | None = None,
        audit: AuditLog | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock or SystemClock()
        self.protected = tuple(protected)
        self._white = WhiteList(self.protected)
        g = config.global_
        self.ar_log = ar_log or ActiveResponseLog(g.log_dir)
        self.audit = audit or AuditLog(g.log_dir)
        self._registry = registry
        # Separate pools, so one kind of work cannot starve another: eight 10-minute captures
        # must not hold up a block, and a burst of slow adds must not make an undo late. Fast
        # in-process adds run on one thread per command, their lane (see _dispatch_ready).
        self._pool = ThreadPoolExecutor(max_workers=g.workers, thread_name_prefix="dfir-ar-exec")
        self._lanes: dict[str, ThreadPoolExecutor] = {}
        self._lanes_lock = threading.Lock()
        self._lanes_closed = False
        self._undo_pool = ThreadPoolExecutor(
            max_workers=max(2, g.workers // 4), thread_name_prefix="dfir-ar-undo"
        )
        self._collect_pool = ThreadPoolExecutor(
            max_workers=g.workers, thread_name_prefix="dfir-ar-collect"
        )
        # By name: looked up twice per order (config.command_named walks the list).
        self._commands = {c.name: c for c in config.command}
        self._plugins: dict[str, type[Responder]] = {}
        self._responders: dict[str, Responder] = {}
        self._resolve_lock = threading.Lock()
        self._table: TimeoutTable[Ident] = TimeoutTable()
        self._cond = threading.Condition()
        self._locks: KeyedLocks[Ident] = KeyedLocks()
        self._limiters: dict[str, RateLimiter] = {}
        self._active = ledger.count_entries()
        self._committer = GroupCommitter(ledger, after_batch=self._dispatch_ready)
        # Plans of the batch being committed; only the committer thread touches it.
        self._ready: list[_Plan] = []
        self._tls = threading.local()
        # Share of each command's recent adds that were fast: decides how a batch is spread.
        self._add_fast: dict[str, float] = {}
        # The constant text around the alert in the Wazuh input-JSON log line (_log_start).
        self._start_frames: dict[tuple[str, str, tuple[str, ...]], tuple[bytes, bytes]] = {}
        self._expiry: dict[Ident, float] = {}
        self._active_lock = threading.Lock()
        self._delete_failures: Counter[Ident] = Counter()
        # Share of each command's recent deletes that were fast: decides how expiries go.
        self._delete_fast: dict[str, float] = {}
        self._cancels: set[threading.Event] = set()
        self._stopping = threading.Event()
        self.counters: Counter[str] = Counter()
        self._node = g.agent_name or _hostname()
        # The first purge check one interval after start (reconcile has just checked).
        self._next_repair = time.monotonic() + g.repair_interval
        self._repairing = threading.Lock()

    # -- plug-in resolution --------------------------------------------------------------

    def register_responder(self, name: str, cls: type[Responder]) -> None:
        """Make ``cls`` the responder for executable ``name`` (embedders, benchmarks, tests)."""
        with self._resolve_lock:
            self._plugins[name] = cls
            for cmd in self.config.command:
                if cmd.executable == name:
                    self._responders.pop(cmd.name, None)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = load_registry()
        return self._registry

    def command(self, name: str) -> CommandConfig:
        cmd = self._commands.get(name)
        if cmd is None:
            known = ", ".join(c.name for c in self.config.command) or "none"
            raise Refused(f"no [[command]] named {name!r} in the config (configured: {known})")
        return cmd

    def is_collector(self, cmd: CommandConfig) -> bool:
        if cmd.executable in self._plugins:
            return False
        return cmd.executable in self.registry.collectors

    def responder(self, cmd: CommandConfig) -> Responder:
        """The (cached) responder instance that executes ``cmd``."""
        # Lock-free when cached (a dict read is atomic): the source thread (_lookups) and the
        # ledger writer ask for every alert, and a contended lock is a GIL hand-off each time.
        cached = self._responders.get(cmd.name)
        if cached is not None:
            return cached
        with self._resolve_lock:
            found = self._responders.get(cmd.name)
            if found is not None:
                return found
            context = ResponderContext(
                state_dir=self.config.global_.state_dir,
                white_list=self.protected,
                options=self.config.responders.get(cmd.executable, {}),
                clock=self.clock,
                log=logging.getLogger(f"dfir_ar.responder.{cmd.executable}"),
            )
            responder: Responder
            if cmd.executable in self._plugins:
                responder = self._plugins[cmd.executable](context)
            elif cmd.executable in self.registry.responders:
                responder = self.registry.responder(cmd.executable)(context)
            else:
                script = self.config.global_.active_response_dir / cmd.executable
                if not script.is_file():
                    raise PluginUnavailable(
                        f"command {cmd.name!r}: executable {cmd.executable!r} is neither a "
                        f"plug-in nor a file in {self.config.global_.active_response_dir}"
                    )
                from responders.external import ExternalScript

                name = cmd.name
                responder = ExternalScript.for_command(
                    cmd,
                    self.config.global_.active_response_dir,
                    context,
                    lambda key: self._key_active(name, key),
                    default_deadline=self.config.global_.execution_deadline,
                    node=self._node,
                )
            self._responders[cmd.name] = responder
            return responder

    def _key_active(self, command: str, key: str) -> bool:
        # Only applied rows count: the intent of the order asking is in the ledger already.
        entry = self.ledger.get(command, key)
        return entry is not None and entry.status == APPLIED

    # -- intake --------------------------------------------------------------------------

    def submit(self, order: Order) -> Ticket:
        return self.accept([order])[0]

    def accept(
        self, orders: Sequence[Order], *, cursor: Cursor | None = None, wait: bool = False
    ) -> list[Ticket]:
        """Record every order (and the source cursor) atomically, then run them.

        Returns at once with one ticket per order (resolved when its execution ends); with
        ``wait`` only after the orders and the cursor are committed. Raises StateError when the
        ledger can no longer be written (the caller must stop, not skip the alert).
        """
        tickets: list[Ticket] = [Ticket() for _ in orders]
        orders = list(orders)

        keys = self._keys(orders)

        def record(tx: Tx) -> list[_Plan]:
            now = self.clock.now()
            plans = []
            for order, ticket, key in zip(orders, tickets, keys, strict=True):
                plan = self._prepare(tx, order, now, key)
                plan.ticket = ticket
                plans.append(plan)
            if cursor is not None:
                tx.save_cursor(cursor.source, cursor.position, now)
            return plans

        def run(plans: list[_Plan]) -> None:
            # Only after the commit: what runs is exactly what is recorded. The committer calls
            # _dispatch_ready once the whole batch's callbacks ran.
            adds = sum(1 for plan in plans if plan.kind == "add")
            if adds:
                with self._active_lock:
                    self._active += adds
            self._ready.extend(plans)

        if wait:
            self._committer.submit(record, run).result()
        else:
            pairs = [(order.command, key) for order, key in zip(orders, keys, strict=True) if key]
            self._committer.post(record, run, prefetch=pairs or None)
        return tickets

    def _keys(self, orders: Sequence[Order]) -> list[str | None]:
        """Each order's dedup key (None for a collection, or when it cannot be worked out),
        computed here, in the caller's thread: the writer then reads a whole batch's ledger rows
        in one statement and does not compute the keys again. Best effort: an order that fails
        here is keyed (or refused) the ordinary way in _prepare."""
        keys: list[str | None] = []
        for order in orders:
            key = None
            try:
                cmd = self.command(order.command)
                if not self.is_collector(cmd):
                    responder = self.responder(cmd)
                    key = responder.key(self._request(order, cmd, self._timeout(responder, order)))
            except Exception:  # noqa: BLE001 - _prepare reports it properly
                key = None
            keys.append(key)
        return keys

    @staticmethod
    def _timeout(responder: Responder, order: Order) -> float | None:
        """The first-offence timeout an order asks of ``responder`` (None: no undo)."""
        timeout = order.timeout if responder.supports_timeout else None
        return None if timeout is not None and timeout <= 0 else timeout

    def flush(self) -> None:
        """Wait until every accepted order is committed (and its execution started)."""
        self._committer.flush()

    def _refuse(self, order: Order, reason: str, key: str | None = None) -> _Plan:
        return _Plan(kind="refused", order=order, reason=reason, key=key)

    def _prepare(self, tx: Tx, order: Order, now: float, key: str | None = None) -> _Plan:
        try:
            cmd = self.command(order.command)
            if self.is_collector(cmd):
                return self._prepare_collect(tx, order, cmd, now)
            return self._prepare_response(tx, order, cmd, now, key)
        except DfirArError as exc:
            return self._refuse(order, str(exc))

    def _prepare_collect(self, tx: Tx, order: Order, cmd: CommandConfig, now: float) -> _Plan:
        if not self._rate_allows(cmd):
            return self._refuse(order, f"rate limit of {cmd.max_per_minute}/min for {cmd.name}")
        request = self._request(order, cmd, order.timeout)
        tx.add_job(order.id, cmd.name, request, now)
        return _Plan(kind="collect", order=order, command=cmd, request=request)

    def _prepare_response(
        self, tx: Tx, order: Order, cmd: CommandConfig, now: float, key: str | None = None
    ) -> _Plan:
        responder = self.responder(cmd)
        hit = None
        if order.target.srcip is not None and self._white.contains(order.target.srcip):
            hit = self._white.covering(order.target.srcip)
        if hit is not None:
            return self._refuse(
                order, f"srcip {order.target.srcip} is protected ({hit}: white list, own "
                "address, loopback or gateway); containment refused on the agent"
            )
        for arg in responder.expects:
            if getattr(order.target, arg.value, None) is None:
                return self._refuse(order, f"{cmd.name} needs {arg.value}; the order has none")
        timeout = self._timeout(responder, order)
        if key is None:
            key = responder.key(self._request(order, cmd, timeout))
        window = self.config.global_.offender_window
        existing, previous, last = tx.lookup(cmd.name, key)
        # While an entry exists it carries the offender counter; the offenders table gets it when
        # the entry is retired (one write fewer per new alert on the hot path).
        if existing is not None:
            previous, last = existing.offences, existing.last_offence
        offence = next_offence(
            previous,
            last_offence=last,
            now=now,
            window=window,
            timeout=timeout,
            repeated_offenders=order.repeated_offenders,
        )
        request = self._request(order, cmd, offence.timeout)
        if existing is not None:
            # Dedup by (command, key): a repeat refreshes the timer and escalates.
            expires = None if offence.timeout is None else now + offence.timeout
            if existing.expires_at is not None and expires is not None:
                expires = max(expires, existing.expires_at)  # never shorten a block
            elif existing.expires_at is None:
                expires = None
            tx.refresh(cmd.name, key, expires_at=expires, offences=offence.count, now=now)
            self._note_expiry((cmd.name, key), expires)
            return _Plan(
                kind="refresh", order=order, command=cmd, request=request, key=key,
                expires_at=expires, timeout=offence.timeout, offences=offence.count,
            )
        cap = self.config.global_.max_active_responses
        with self._active_lock:
            active = self._active
        if not active_cap_allows(active, cap):
            return self._refuse(
                order, f"global cap of {cap} active responses reached "
                "(global.max_active_responses)", key
            )
        if not self._rate_allows(cmd):
            return self._refuse(
                order, f"rate limit of {cmd.max_per_minute}/min for {cmd.name}", key
            )
        expires = None if offence.timeout is None else now + offence.timeout
        tx.insert_intent(
            command=cmd.name, key=key, order_id=order.id, agent_id=self.config.global_.agent_id,
            request=request, now=now, expires_at=expires, offences=offence.count,
        )
        self._note_expiry((cmd.name, key), expires)
        return _Plan(
            kind="add", order=order, command=cmd, request=request, key=key,
            expires_at=expires, timeout=offence.timeout, offences=offence.count,
        )

    def _note_expiry(self, ident: Ident, expires: float | None) -> None:
        # Written only by the committer thread as rows change; read by workers so the hot path
        # needs no ledger read. A stale read is harmless: a delete re-checks the ledger row.
        if expires is None:
            self._expiry.pop(ident, None)
        else:
            self._expiry[ident] = expires

    def _rate_allows(self, cmd: CommandConfig) -> bool:
        if cmd.max_per_minute is None:
            return True
        limiter = self._limiters.get(cmd.name)
        if limiter is None:
            limiter = self._limiters[cmd.name] = RateLimiter(cmd.max_per_minute)
        # The rails' token bucket wants a clock that never goes back.
        return limiter.allow(cmd.name, self.clock.monotonic())

    def _request(self, order: Order, cmd: CommandConfig, timeout: float | None) -> Request:
        return Request(
            command=cmd.name,
            target=order.target,
            order_id=order.id,
            timeout=timeout,
            extra_args=order.extra_args or cmd.extra_args,
            alert=order.alert,
        )

    # -- dispatch ------------------------------------------------------------------------

    #: An add faster than this is in-process work a thread cannot overlap under the GIL: a
    #: command whose recent adds mostly were runs its batches one after another on its fast
    #: lane, in chunks.
    FAST_ADD = 0.0005
    #: Most executions one fast-lane task runs (its log lines and marks are written per task).
    FAST_CHUNK = 256
    #: A pool task writes its log lines, audit records and applied marks at least this often.
    FLUSH_EVERY = 0.005

    def _dispatch_ready(self) -> None:
        """Hand a committed batch on: refusals at once, collections one task each, adds and
        refreshes in chunks, an identity always in the same chunk (a repeat runs after the add
        it repeats).

        A batch of only fast commands goes to their lanes, one thread per command: spread over
        several workers they would only take the GIL from each other (bench/engine ran 20%
        faster on one lane), and a backend that hangs holds up only its own command. A batch
        with a slow one (a script, a kernel call) is spread over every worker, since those wait
        outside the GIL."""
        plans, self._ready = self._ready, []
        work: list[_Plan] = []
        slow = False
        for plan in plans:
            if plan.kind in ("add", "refresh"):
                work.append(plan)
                cmd = plan.command
                assert cmd is not None
                if not _mostly_fast(self._add_fast.get(cmd.name)):
                    slow = True
            else:
                self._dispatch(plan)
        if not work:
            return
        if not slow:
            by_command: dict[str, list[_Plan]] = {}
            for plan in work:
                assert plan.command is not None
                by_command.setdefault(plan.command.name, []).append(plan)
            for name, plans_of in by_command.items():
                lane = self._lane(name)
                for i in range(0, len(plans_of), self.FAST_CHUNK):
                    self._submit_chunk(plans_of[i:i + self.FAST_CHUNK], lane)
            return
        count = min(self.config.global_.workers, len(work))
        if count == 1:
            self._submit_chunk(work)
            return
        chunks: list[list[_Plan]] = [[] for _ in range(count)]
        placed: dict[Ident, int] = {}
        turn = 0
        for plan in work:
            assert plan.command is not None and plan.key is not None
            ident = (plan.command.name, plan.key)
            index = placed.get(ident)
            if index is None:
                index = placed[ident] = turn % count
                turn += 1
            chunks[index].append(plan)
        for chunk in chunks:
            if chunk:
                self._submit_chunk(chunk)

    def _lane(self, command: str) -> ThreadPoolExecutor:
        """``command``'s fast lane (one thread, made on first use)."""
        with self._lanes_lock:
            if self._lanes_closed:
                return self._pool  # stopping: _submit_chunk reports the chunk as not run
            lane = self._lanes.get(command)
            if lane is None:
                lane = self._lanes[command] = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="dfir-ar-fast"
                )
            return lane

    def _submit_chunk(self, plans: list[_Plan], pool: ThreadPoolExecutor | None = None) -> None:
        try:
            (pool or self._pool).submit(self._run_chunk, plans)
        except RuntimeError:  # pool shut down: the ledger keeps them for the next start
            for plan in plans:
                plan.ticket.set_result(
                    self._result(plan, plan.kind, "failed", error="executor is stopping")
                )

    def _run_chunk(self, plans: list[_Plan]) -> None:
        """Run adds/refreshes one after another, gathering their log lines, audit records,
        applied marks and timers into one write each (flushed every FLUSH_EVERY seconds)."""
        batch = _Batch(started=time.monotonic())
        self._tls.batch = batch
        try:
            for group in self._groups(plans):
                try:
                    if len(group) > 1:
                        results = self._run_add_many(group)
                    else:
                        plan = group[0]
                        run = self._run_add if plan.kind == "add" else self._run_refresh
                        results = [run(plan)]
                except BaseException as exc:  # a bug must not leave a --wait hanging
                    log.exception("%s %s: unexpected error", group[0].kind, group[0].order.command)
                    batch.done.extend((plan.ticket, exc) for plan in group)
                    continue
                batch.done.extend(
                    (plan.ticket, result) for plan, result in zip(group, results, strict=True)
                )
                if time.monotonic() - batch.started >= self.FLUSH_EVERY:
                    self._flush_batch(batch)
                    batch = _Batch(started=time.monotonic())
                    self._tls.batch = batch
        finally:
            self._tls.batch = None
            self._flush_batch(batch)

    #: Most adds handed to one Responder.add_many call.
    BATCH_ADD = 256

    def _groups(self, plans: list[_Plan]) -> Iterator[list[_Plan]]:
        """``plans`` in order, as runs: consecutive adds of one command whose responder adds in
        batches (``batch_add``) together, everything else alone. Order is kept, so a refresh
        still runs after the add it repeats."""
        group: list[_Plan] = []
        for plan in plans:
            cmd = plan.command
            try:
                batchable = (
                    plan.kind == "add" and cmd is not None and self.responder(cmd).batch_add
                )
            except Exception:  # noqa: BLE001 - run alone: _run_add records the failure
                batchable = False
            if group and (
                not batchable
                or group[0].command is not cmd
                or len(group) >= self.BATCH_ADD
            ):
                yield group
                group = []
            if batchable:
                group.append(plan)
            else:
                yield [plan]
        if group:
            yield group

    def _run_add_many(self, plans: list[_Plan]) -> list[Result]:
        """Adds of one command in one ``add_many`` call (one kernel transaction for a flood of
        new addresses). Each still gets its own log lines, audit record and applied mark; if
        the batch call fails as a whole they are retried one by one."""
        cmd = plans[0].command
        assert cmd is not None
        responder = self.responder(cmd)
        # Every identity's lock (a delete of one of them waits for the batch), held through
        # each order's bookkeeping as a single add holds its own.
        with self._locks.hold_all((cmd.name, p.key or "") for p in plans):
            requests = []
            for plan in plans:
                assert plan.request is not None
                self._log_start(cmd, "add", plan.request)
                requests.append(plan.request)
            start = time.monotonic()
            try:
                with procs.deadline_scope(start + self._deadline(cmd)):
                    out = responder.add_many(requests)
            except Exception as exc:  # noqa: BLE001 - retried one by one, each recorded
                log.warning("%s: adding %d at once failed (%s); adding them one by one",
                            cmd.name, len(plans), exc)
                out = None
            each = (time.monotonic() - start) / len(plans)
            if out is not None:
                states = {request.order_id: state for request, state in out.added}
                refused = {request.order_id: reason for request, reason in out.refused}
                return [
                    self._add_ok(plan, states[plan.order.id], each)
                    if plan.order.id in states
                    else self._add_failed(
                        plan, Refused(refused.get(plan.order.id, "add_many did not report it")),
                        each,
                    )
                    for plan in plans
                ]
        return [self._run_add(plan, started=True) for plan in plans]

    def _flush_batch(self, batch: _Batch) -> None:
        # Order matters: the audit record is written before the applied mark (a crash in
        # between retries the idempotent add and records it again, flagged as retried).
        try:
            if batch.ar:
                self.ar_log.write_bytes(b"".join(batch.ar))
            if batch.audit:
                self.audit.write_bytes(b"".join(batch.audit))
        except OSError as exc:
            log.error("cannot write the active-response/audit log: %s", exc)
        if batch.applied:
            rows = batch.applied
            try:
                # Not waited for: concurrent executions share one commit. A crash before it
                # lands leaves intents, which the next start retries.
                self._committer.post(lambda tx: tx.mark_applied_many(rows))
            except StateError as exc:
                log.error("%d applied mark(s) not recorded (retried at the next start): %s",
                          len(rows), exc)
        if batch.schedule:
            with self._cond:
                before = self._table.next_deadline()
                for ident, deadline in batch.schedule:
                    self._table.schedule(ident, deadline)
                if before is None or min(d for _, d in batch.schedule) < before:
                    self._cond.notify_all()
        for ticket, outcome in batch.done:
            if isinstance(outcome, BaseException):
                ticket.set_exception(outcome)
            else:
                ticket.set_result(outcome)

    def _batch(self) -> _Batch | None:
        batch: _Batch | None = getattr(self._tls, "batch", None)
        return batch

    def _write_ar(self, now: float, executable: str, *messages: str) -> None:
        batch = self._batch()
        if batch is None:
            self.ar_log.write(now, executable, *messages)
        else:
            batch.ar.append(self.ar_log.encode(now, executable, *messages))

    def _dispatch(self, plan: _Plan) -> Ticket:
        if plan.kind == "refused":
            plan.ticket.set_result(self._record_refusal(plan))
            return plan.ticket
        work: Callable[[_Plan], Result] = {
            "add": self._run_add,
            "refresh": self._run_refresh,
            "collect": self._run_collect,
        }[plan.kind]

        def task() -> None:
            try:
                plan.ticket.set_result(work(plan))
            except BaseException as exc:  # a bug must not leave a --wait hanging
                log.exception("%s %s: unexpected error", plan.kind, plan.order.command)
                plan.ticket.set_exception(exc)

        pool = self._collect_pool if plan.kind == "collect" else self._pool
        try:
            pool.submit(task)
        except RuntimeError:  # pool shut down: the ledger keeps it for the next start
            plan.ticket.set_result(
                self._result(plan, plan.kind, "failed", error="executor is stopping")
            )
        return plan.ticket

    def _record_refusal(self, plan: _Plan) -> Result:
        order = plan.order
        self.counters["refused"] += 1
        log.warning(
            "refused %s (order %s, srcip %s, user %s): %s",
            order.command, order.id, order.target.srcip, order.target.username, plan.reason,
        )
        result = self._result(plan, "refused", "refused", error=plan.reason)
        self._audit(plan, result)
        return result

    def _deadline(self, cmd: CommandConfig) -> float:
        return cmd.deadline or self.config.global_.execution_deadline

    def _result(
        self, plan: _Plan, action: str, outcome: str, *, error: str | None = None,
        duration: float = 0.0, details: Mapping[str, Any] | None = None,
        expires_at: float | EllipsisType | None = ...,
    ) -> Result:
        return Result(
            order_id=plan.order.id, command=plan.order.command, action=action, key=plan.key,
            outcome=outcome, error=error, duration=duration,
            expires_at=plan.expires_at if isinstance(expires_at, EllipsisType) else expires_at,
            offences=plan.offences, details=details or {},
        )

    def _alert_dict(self, request: Request) -> dict[str, Any]:
        if request.alert is not None:
            return request.alert.to_wazuh()
        # A manual order: the shape Wazuh's API builds for PUT /active-response.
        data: dict[str, Any] = {}
        if request.target.srcip is not None:
            data["srcip"] = str(request.target.srcip)
        if request.target.username is not None:
            data["dstuser"] = request.target.username
        return {"data": data}

    def _log_start(self, cmd: CommandConfig, action: str, request: Request) -> None:
        alert = request.alert
        raw = None if alert is None else alert.raw
        body: bytes | None = None
        if isinstance(raw, RawAlert):
            # Re-encoded from the decoded object, not the line as received: a line with a key
            # twice would show both in the log while the engine acted on the last one.
            body = codec.dumpb(raw.decoded())
        elif raw and isinstance(raw, dict):
            body = codec.dumpb(raw)
        now = self.clock.now()
        if body is None:
            msg = wazuh_message(
                action, cmd.executable, self._alert_dict(request), request.extra_args, self._node
            )
            self._write_ar(now, cmd.executable, "Starting", codec.dumps(msg))
            return
        # The JSON wazuh_message(...) gives, built around the alert's text instead of copying
        # the alert into a new dict tree (this runs for every alert): the text before and after
        # the alert comes from wazuh_message itself, encoded once with a marker in its place.
        parts = (action, cmd.executable, request.extra_args)
        frame = self._start_frames.get(parts)
        if frame is None:
            msg = wazuh_message(action, cmd.executable, {}, request.extra_args, self._node)
            msg["parameters"]["alert"] = _ALERT_SLOT
            head, slot, tail = codec.dumpb(msg).partition(b'"' + _ALERT_SLOT.encode() + b'"')
            assert slot, "the alert marker is in the encoded message"
            if len(self._start_frames) > 1024:  # extra_args vary: keep it bounded
                self._start_frames.clear()
            frame = self._start_frames[parts] = (head, tail)
        data = self.ar_log.encode_lines(
            now, cmd.executable, (b"Starting", frame[0] + body + frame[1])
        )
        batch = self._batch()
        if batch is None:
            self.ar_log.write_bytes(data)
        else:
            batch.ar.append(data)

    def _audit(self, plan: _Plan, result: Result, exit_status: int | None = None) -> None:
        target = plan.order.target
        alert = plan.order.alert
        record = AuditRecord(
            time=self.clock.now(),
            order_id=result.order_id,
            command=result.command,
            action=result.action,
            key=result.key,
            outcome=result.outcome,
            duration=round(result.duration, 6),
            exit_status=exit_status,
            error=result.error,
            agent=self.config.global_.agent_id,
            srcip=None if target.srcip is None else str(target.srcip),
            username=target.username,
            alert_id=None if alert is None else alert.id,
            rule_id=None if alert is None else alert.rule_id,
            operator=plan.order.operator,
            expires_at=result.expires_at if result.action in ("add", "refresh") else None,
            offences=result.offences or None,
            details=dict(result.details),
        )
        batch = self._batch()
        if batch is None:
            self.audit.write(record)
        else:
            batch.audit.append(self.audit.encode(record))

    def _run_add(self, plan: _Plan, *, started: bool = False) -> Result:
        """One add under its identity's lock (``started``: its Starting lines are written)."""
        cmd, request, key = plan.command, plan.request, plan.key
        assert cmd is not None and request is not None and key is not None
        with self._locks.hold((cmd.name, key)):
            responder = self.responder(cmd)
            if not started:
                self._log_start(cmd, "add", request)
            start = time.monotonic()
            try:
                with procs.deadline_scope(start + self._deadline(cmd)):
                    state = responder.add(request)
            except Exception as exc:  # noqa: BLE001 - a plug-in failure is recorded, not fatal
                return self._add_failed(plan, exc, time.monotonic() - start)
            return self._add_ok(plan, state, time.monotonic() - start)

    def _add_failed(self, plan: _Plan, exc: Exception, duration: float) -> Result:
        """An add that did not put the action in place: the intent goes, the log says why."""
        cmd, key = plan.command, plan.key
        assert cmd is not None and key is not None
        if type(exc).__name__ == "AlreadyActive":
            return self._already_active(plan, exc, duration)
        self.ledger.remove(cmd.name, key, plan.order.id)
        self._expiry.pop((cmd.name, key), None)
        with self._active_lock:
            self._active -= 1
        outcome = "timeout" if isinstance(exc, DeadlineExceeded) else "failed"
        self.counters[f"add_{outcome}"] += 1
        log.error("%s add %s failed: %s", cmd.name, key, exc)
        self._write_ar(self.clock.now(), cmd.executable, f"Error: {exc}", "Aborted")
        result = self._result(plan, "add", outcome, error=str(exc), duration=duration)
        self._audit(plan, result)
        return result

    def _add_ok(self, plan: _Plan, state: State, duration: float) -> Result:
        """An add that is in place: Ended, the audit record, then the applied mark and timer."""
        cmd, key = plan.command, plan.key
        assert cmd is not None and key is not None
        ident = (cmd.name, key)
        _note_speed(self._add_fast, cmd.name, duration)
        # A repeat may have refreshed the timer while this add ran (in-memory, see _expiry).
        expires_at = self._expiry.get(ident, plan.expires_at)
        self._write_ar(self.clock.now(), cmd.executable, "Ended")
        self.counters["add_ok"] += 1
        result = self._result(
            plan, "add", "ok", duration=duration,
            details={"retried_intent": True} if plan.retry else None, expires_at=expires_at,
        )
        # Recorded before the applied mark: a crash in between retries the (idempotent) add
        # and records it again, flagged; the other order would lose the record.
        self._audit(plan, result)
        applied_at = self.clock.now()
        order_id = plan.order.id
        batch = self._batch()
        if batch is not None:
            batch.applied.append((cmd.name, key, order_id, state, applied_at))
            if expires_at is not None:
                batch.schedule.append((ident, expires_at))
            return result
        # Through the group committer, not waited for: concurrent executions share one
        # commit. A crash before it lands leaves an intent, which the next start retries.
        self._committer.post(
            lambda tx: tx.mark_applied(cmd.name, key, order_id, state, applied_at)
        )
        if expires_at is not None:
            self._schedule(ident, expires_at)
        return result

    def _already_active(self, plan: _Plan, exc: Exception, duration: float) -> Result:
        """Seam D: the script answered check_keys with keys already in place; refresh those."""
        cmd, key = plan.command, plan.key
        assert cmd is not None and key is not None
        self.ledger.remove(cmd.name, key, plan.order.id)
        self._expiry.pop((cmd.name, key), None)
        with self._active_lock:
            self._active -= 1
        other = getattr(exc, "key", None) or getattr(exc, "keys", None)
        keys = [other] if isinstance(other, str) else list(other or [])
        now = self.clock.now()
        for k in keys:
            entry = self.ledger.get(cmd.name, str(k))
            if entry is not None and plan.timeout is not None:
                expires = max(now + plan.timeout, entry.expires_at or 0.0)
                with self.ledger.transaction() as tx:
                    tx.refresh(cmd.name, entry.key, expires_at=expires,
                               offences=entry.offences + 1, now=now)
                self._schedule((cmd.name, entry.key), expires)
        self._write_ar(now, cmd.executable, "Aborted")
        self.counters["already_active"] += 1
        result = self._result(plan, "add", "already-active", duration=duration,
                              details={"keys": [str(k) for k in keys]})
        self._audit(plan, result)
        return result

    def _run_refresh(self, plan: _Plan) -> Result:
        cmd, request, key = plan.command, plan.request, plan.key
        assert cmd is not None and request is not None and key is not None
        ident = (cmd.name, key)
        with self._locks.hold(ident):
            entry = self.ledger.get(cmd.name, key)
            if entry is None:  # undone between prepare and now: nothing to refresh
                result = self._result(plan, "refresh", "failed", error="entry undone meanwhile")
                self._audit(plan, result)
                return result
            start = time.monotonic()
            responder = self.responder(cmd)
            remaining = entry.remaining(self.clock.now())
            # What Wazuh logs for a repeat: the add starts, check_keys finds the key active, the
            # script is told to abort (and execd refreshes the timer).
            self._log_start(cmd, "add", request)
            self._write_ar(self.clock.now(), cmd.executable, "Aborted")
            error: str | None = None
            try:
                with procs.deadline_scope(start + self._deadline(cmd)):
                    responder.refresh(entry.request(), entry.state or {}, remaining)
            except Exception as exc:  # noqa: BLE001 - a plug-in failure is recorded, not fatal
                # The ledger timer is already extended; a backend whose kernel timeout could not
                # follow is repaired by the next reconcile. Say so rather than fail the order.
                error = f"refresh of the backend failed: {exc}"
                log.error("%s refresh %s: %s", cmd.name, key, exc)
            if entry.expires_at is not None:
                self._schedule(ident, entry.expires_at)
            self.counters["refreshed"] += 1
            log.info(
                "%s %s repeated (offence %d): timer refreshed, expires in %s",
                cmd.name, key, plan.offences,
                "never" if remaining is None else f"{remaining:.0f}s",
            )
            result = self._result(
                plan, "refresh", "refreshed", error=error, duration=time.monotonic() - start,
                expires_at=entry.expires_at,
            )
            self._audit(plan, result)
            return result

    def _run_collect(self, plan: _Plan) -> Result:
        from dfir_ar.evidence.collect import run_collection
        from dfir_ar.evidence.manifest import Trigger

        cmd, request = plan.command, plan.request
        assert cmd is not None and request is not None
        cancel = threading.Event()
        self._cancels.add(cancel)
        start = time.monotonic()
        self._log_start(cmd, "add", request)
        try:
            cls = self.registry.collector(cmd.executable)
            collector: Collector = cls(
                CollectorContext(
                    state_dir=self.config.global_.state_dir,
                    settings=self.config.collectors.get(cmd.executable, {}),
                    log=logging.getLogger(f"dfir_ar.collector.{cmd.executable}"),
                )
            )
            options = cls.parse_options(request.extra_args)
            duration = float(options.get("duration", cls.default_duration) or cls.default_duration)
            budget = cmd.deadline or duration + COLLECT_MARGIN
            from dfir_ar.collector import CollectJob

            job = CollectJob(
                target=request.target,
                options=options,
                deadline=self.clock.monotonic() + budget,
                max_bytes=self.config.evidence.max_bundle_mb * 1024 * 1024,
                cancel=cancel,
                clock=self.clock,
                order_id=plan.order.id,
                progress=lambda message, fraction: log.debug(
                    "%s %s: %s (%s)", cmd.name, plan.order.id, message, fraction
                ),
            )
            with procs.deadline_scope(time.monotonic() + budget):
                bundle = run_collection(
                    collector, job, trigger=Trigger.from_order(plan.order), config=self.config
                )
        except Exception as exc:  # noqa: BLE001 - a plug-in failure is recorded, not fatal
            self.ledger.remove_job(plan.order.id)
            log.error("%s collect for order %s failed: %s", cmd.name, plan.order.id, exc)
            self._write_ar(self.clock.now(), cmd.executable, f"Error: {exc}", "Aborted")
            self.counters["collect_failed"] += 1
            result = self._result(plan, "collect", "failed", error=str(exc),
                                  duration=time.monotonic() - start)
            self._audit(plan, result)
            return result
        finally:
            self._cancels.discard(cancel)
        self.ledger.remove_job(plan.order.id)
        self._write_ar(self.clock.now(), cmd.executable, "Ended")
        status = str(bundle.status)
        self.counters[f"collect_{status}"] += 1
        result = self._result(
            plan, "collect", "ok" if status != "failed" else "failed",
            duration=time.monotonic() - start,
            details={"bundle_id": bundle.bundle_id, "status": status, "path": str(bundle.path)},
        )
        self._audit(plan, result)
        return result

    # -- timeouts ------------------------------------------------------------------------

    def _schedule(self, ident: Ident, deadline: float) -> None:
        with self._cond:
            before = self._table.next_deadline()
            self._table.schedule(ident, deadline)
            if before is None or deadline < before:
                self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._table)

    def next_deadline(self) -> float | None:
        with self._cond:
            return self._table.next_deadline()

    def expire_due(self, now: float | None = None, *, wait: bool = False) -> list[Ticket]:
        """Start the undo of every entry due at ``now``; the timeout loop calls this."""
        now = self.clock.now() if now is None else now
        with self._cond:
            due = self._table.due(now)
        tickets = self._submit_deletes(due, "timeout")
        if wait:
            for t in tickets:
                t.result()
        return tickets

    def run_timeouts(self, stop: threading.Event) -> None:
        """The only loop that sleeps: wake on the next deadline, not on a fixed tick."""
        while not stop.is_set() and not self._stopping.is_set():
            self.expire_due()
            self.repair_due(time.monotonic())
            with self._cond:
                ceiling = TICK_CEILING
                if self.config.global_.repair_interval > 0:
                    ceiling = min(ceiling, max(0.05, self._next_repair - time.monotonic()))
                wait = wait_seconds(self.clock.now(), self._table.next_deadline(), ceiling)
                if wait > 0 and not stop.is_set():
                    self._cond.wait(wait)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _submit_deletes(self, idents: list[Ident], reason: str,
                        operator: str | None = None) -> list[Ticket]:
        """Undo ``idents``, one ticket each (in order). Those of fast in-process commands go in
        chunks, so a burst of 10,000 expiries is a few hundred log writes and ledger commits
        instead of 10,000 of each; slow ones (scripts) one task each, in parallel.
        ``operator``: who asked (a release), recorded in the audit records."""
        tickets: dict[Ident, Ticket] = {}
        fast: list[Ident] = []
        for ident in idents:
            if ident in tickets:
                continue
            if self._delete_in_chunks(ident[0]):
                fast.append(ident)
            else:
                tickets[ident] = self._submit_delete(ident, reason, operator)
        for start in range(0, len(fast), self.FAST_CHUNK):
            chunk = fast[start:start + self.FAST_CHUNK]
            tickets.update(zip(chunk, self._submit_delete_chunk(chunk, reason, operator),
                               strict=True))
        return [tickets[ident] for ident in idents]

    def _delete_in_chunks(self, command: str) -> bool:
        """Chunk the deletes of a responder that lifts in batches (one kernel transaction for
        the chunk, however slow each call is on a loaded host) or that is fast in-process work;
        the rest (scripts) go one task each, to run in parallel."""
        cmd = self._commands.get(command)
        try:
            if cmd is not None and not self.is_collector(cmd) and self.responder(cmd).batch_delete:
                return True
        except Exception:  # noqa: BLE001 - not loadable: the delete reports why, one by one
            return False
        # Until a delete was timed, the adds stand in for it (same responder).
        share = self._delete_fast.get(command)
        return _mostly_fast(self._add_fast.get(command) if share is None else share)

    def _submit_delete(self, ident: Ident, reason: str, operator: str | None = None) -> Ticket:
        fut = Ticket()

        def task() -> None:
            try:
                fut.set_result(self._run_delete(ident, reason, operator))
            except BaseException as exc:
                log.exception("delete %s/%s: unexpected error", *ident)
                fut.set_exception(exc)

        try:
            self._undo_pool.submit(task)
        except RuntimeError:
            fut.set_result(
                Result("", ident[0], "delete", ident[1], "failed", error="executor is stopping")
            )
        return fut

    def _submit_delete_chunk(self, idents: list[Ident], reason: str,
                             operator: str | None = None) -> list[Ticket]:
        futs = [Ticket() for _ in idents]

        def task() -> None:
            try:
                results = self._run_delete_chunk(idents, reason, operator)
            except BaseException as exc:
                log.exception("deleting %d entries: unexpected error", len(idents))
                results = [exc] * len(idents)
            for fut, result in zip(futs, results, strict=True):
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

        try:
            self._undo_pool.submit(task)
        except RuntimeError:
            for fut, (command, key) in zip(futs, idents, strict=True):
                fut.set_result(
                    Result("", command, "delete", key, "failed", error="executor is stopping")
                )
        return futs

    def _run_delete(self, ident: Ident, reason: str, operator: str | None = None) -> Result:
        with self._locks.hold(ident):
            undo = self._undo(ident, reason, operator=operator)
            if undo.entry is None:
                return undo.result
            retired = self.ledger.retire(undo.entry, only_if_unchanged=reason == "timeout")
            return self._after_undo(undo, retired)

    def _run_delete_chunk(self, idents: list[Ident], reason: str,
                          operator: str | None = None) -> list[Result | BaseException]:
        """Undo many under all their locks: consecutive deletes of a responder that lifts in
        batches go to one ``delete_many`` call (one kernel transaction), the rest one by one;
        the log lines and audit records are written together, then one ledger transaction
        retires every row (the records still land before the rows go, as in _run_delete)."""
        with self._locks.hold_all(idents):
            batch = _Batch(started=time.monotonic())
            self._tls.batch = batch
            undos: list[_Undo | _PendingUndo | BaseException] = []
            try:
                entries = self.ledger.get_many(idents)
                for ident in idents:
                    try:
                        undos.append(self._undo_begin(ident, reason, entries.get(ident),
                                                      operator=operator))
                    except Exception as exc:  # this one fails, the rest go on
                        log.exception("delete %s/%s: unexpected error", *ident)
                        undos.append(exc)
                for group in self._delete_groups(undos):
                    pending = [undos[i] for i in group]
                    ended: list[_Undo | BaseException]
                    try:
                        ended = list(self._delete_group(
                            [p for p in pending if isinstance(p, _PendingUndo)]
                        ))
                    except Exception as exc:  # these fail, the rest go on
                        log.exception("deleting %d entries: unexpected error", len(group))
                        ended = [exc] * len(group)
                    for i, undo in zip(group, ended, strict=True):
                        undos[i] = undo
            finally:
                self._tls.batch = None
                self._flush_batch(batch)
            done = [u.entry for u in undos if isinstance(u, _Undo) and u.entry is not None]
            retired = iter(
                self.ledger.retire_many(done, only_if_unchanged=reason == "timeout")
                if done else ()
            )
            out: list[Result | BaseException] = []
            for u in undos:
                if isinstance(u, _Undo):
                    out.append(u.result if u.entry is None else self._after_undo(u, next(retired)))
                else:
                    assert isinstance(u, BaseException)  # every pending one was run above
                    out.append(u)
            return out

    @staticmethod
    def _delete_groups(undos: Sequence[object]) -> list[list[int]]:
        """Indexes of the pending deletes, as runs: consecutive ones of one command whose
        responder deletes in batches together, every other one alone."""
        groups: list[list[int]] = []
        for i, undo in enumerate(undos):
            if not isinstance(undo, _PendingUndo):
                continue
            last = groups[-1] if groups else None
            if (
                last is not None
                and undo.responder.batch_delete
                and isinstance(prev := undos[last[-1]], _PendingUndo)
                and prev.cmd is undo.cmd
                and last[-1] == i - 1
            ):
                last.append(i)
            else:
                groups.append([i])
        return groups

    def _delete_group(self, group: list[_PendingUndo]) -> list[_Undo]:
        first = group[0]
        if len(group) > 1:
            start = time.monotonic()
            try:
                with procs.deadline_scope(start + self._deadline(first.cmd)):
                    first.responder.delete_many(
                        [(p.request, p.entry.state or {}) for p in group]
                    )
            except Exception as exc:  # noqa: BLE001 - retried one by one, each recorded
                log.warning("%s: deleting %d at once failed (%s); deleting them one by one",
                            first.cmd.name, len(group), exc)
            else:
                each = (time.monotonic() - start) / len(group)
                return [self._undo_end(p, None, each) for p in group]
        return [self._undo_run(p) for p in group]

    def _undo(
        self, ident: Ident, reason: str, entry: Entry | _Missing | None = _MISSING,
        *, operator: str | None = None,
    ) -> _Undo:
        """The responder's delete and its log lines and audit record; the result's ``entry`` is
        set when the ledger row is to be retired (the caller holds the identity's lock).
        ``entry``: the row read under that lock already (None: there is none)."""
        begun = self._undo_begin(ident, reason, entry, operator=operator)
        return begun if isinstance(begun, _Undo) else self._undo_run(begun)

    def _undo_begin(
        self, ident: Ident, reason: str, entry: Entry | _Missing | None = _MISSING,
        *, operator: str | None = None,
    ) -> _Undo | _PendingUndo:
        """Everything before the responder's delete: the row, the refreshed-meanwhile check,
        the Starting lines. An _Undo when it ends here (gone, refreshed or failed)."""
        command, key = ident
        now = self.clock.now()
        if isinstance(entry, _Missing):
            entry = self.ledger.get(command, key)
        if entry is None:
            return _Undo(Result("", command, "delete", key, "ok", details={"note": "already gone"}))
        if reason == "timeout" and entry.expires_at is not None and entry.expires_at > now:
            self._schedule(ident, entry.expires_at)  # refreshed after it was popped
            return _Undo(Result(entry.order_id, command, "delete", key, "refreshed"))
        try:
            decoded: Request | None = entry.request()
        except StateError:
            decoded = None  # recorded as the delete's failure below
        order = self._order_of(entry, decoded)
        if operator is not None:
            order = structs.replace(order, operator=operator)  # who lifted it, for the audit
        plan = _Plan(kind="delete", order=order, key=key,
                     expires_at=entry.expires_at, offences=entry.offences)
        try:
            cmd = self.command(command)
            request = entry.request() if decoded is None else decoded
            responder = self.responder(cmd)
            self._log_start(cmd, "delete", request)
        except Exception as exc:  # noqa: BLE001 - a plug-in failure is recorded, not fatal
            return self._undo_failed(ident, reason, plan, now, exc, 0.0)
        return _PendingUndo(ident, reason, entry, plan, now, cmd, request, responder)

    def _undo_run(self, pending: _PendingUndo) -> _Undo:
        """The responder's delete of one pending undo, then its bookkeeping."""
        start = time.monotonic()
        try:
            with procs.deadline_scope(start + self._deadline(pending.cmd)):
                pending.responder.delete(pending.request, pending.entry.state or {})
        except Exception as exc:  # noqa: BLE001 - a plug-in failure is recorded, not fatal
            return self._undo_end(pending, exc, time.monotonic() - start)
        return self._undo_end(pending, None, time.monotonic() - start)

    def _undo_end(self, p: _PendingUndo, exc: Exception | None, duration: float) -> _Undo:
        """Log lines and audit record of a delete that ran (``exc``: how it failed)."""
        if exc is not None:
            return self._undo_failed(p.ident, p.reason, p.plan, p.now, exc, duration)
        cmd, entry = p.cmd, p.entry
        _note_speed(self._delete_fast, cmd.name, duration)
        self._delete_failures.pop(p.ident, None)
        self._write_ar(self.clock.now(), cmd.executable, "Ended")
        self.counters["delete_ok"] += 1
        late = max(0.0, p.now - entry.expires_at) if entry.expires_at is not None else 0.0
        result = self._result(p.plan, "delete", "ok", duration=duration,
                              details={"reason": p.reason, "late": round(late, 3)})
        # Recorded before the row goes: a crash in between repeats the (quiet) delete.
        self._audit(p.plan, result)
        return _Undo(result, entry, cmd)

    def _undo_failed(self, ident: Ident, reason: str, plan: _Plan, now: float,
                     exc: Exception, duration: float) -> _Undo:
        """A delete that failed: logged and audited, retried later (the row stays)."""
        command, key = ident
        self._delete_failures[ident] += 1
        attempt = self._delete_failures[ident]
        retry = DELETE_RETRY[min(attempt, len(DELETE_RETRY)) - 1]
        log.error(
            "%s delete %s failed (attempt %d, retry in %.0fs): %s",
            command, key, attempt, retry, exc,
        )
        with_cmd = self._commands.get(command)
        if with_cmd is not None:
            self._write_ar(self.clock.now(), with_cmd.executable, f"Error: {exc}", "Aborted")
        if not isinstance(exc, StateError):
            self._schedule(ident, now + retry)
        result = self._result(plan, "delete", "failed", error=str(exc), duration=duration,
                              details={"reason": reason, "attempt": attempt})
        self._audit(plan, result)
        return _Undo(result)

    def _after_undo(self, undo: _Undo, retired: bool) -> Result:
        entry, cmd = undo.entry, undo.cmd
        assert entry is not None and cmd is not None
        ident = entry.ident
        if not retired:
            # A repeat offence refreshed the row while the undo ran: put the action back.
            return self._reapply(cmd, ident, undo.result)
        self._expiry.pop(ident, None)
        with self._active_lock:
            self._active -= 1
        with self._cond:
            self._table.cancel(ident)
        return undo.result

    def _reapply(self, cmd: CommandConfig, ident: Ident, undone: Result) -> Result:
        entry = self.ledger.get(*ident)
        if entry is None:
            return undone
        log.warning("%s %s was refreshed during its undo; applying it again", *ident)
        remaining = entry.remaining(self.clock.now())
        try:
            request = structs.replace(entry.request(), timeout=remaining)
            with procs.deadline_scope(time.monotonic() + self._deadline(cmd)):
                self.responder(cmd).add(request)
        except Exception as exc:  # noqa: BLE001 - a plug-in failure is recorded, not fatal
            log.error("%s re-apply of %s failed: %s", cmd.name, ident[1], exc)
            self._schedule(ident, self.clock.now() + DELETE_RETRY[0])
            return structs.replace(undone, details={**undone.details, "reapply_error": str(exc)})
        if entry.expires_at is not None:
            self._schedule(ident, entry.expires_at)
        return structs.replace(undone, details={**undone.details, "reapplied": True})

    def _order_of(self, entry: Entry, request: Request | None = None) -> Order:
        """The order an entry came from (``request``: its decoded request, if already done)."""
        if request is None:
            try:
                request = entry.request()
            except StateError:
                return Order(id=entry.order_id, command=entry.command, target=Target())
        return Order(
            id=entry.order_id, command=entry.command, target=request.target,
            timeout=request.timeout, extra_args=request.extra_args, alert=request.alert,
        )

    # -- operator actions ----------------------------------------------------------------

    def release(self, key_or_order_id: str, command: str | None = None, *,
                operator: str | None = None) -> list[Result]:
        """Undo now what matches ``key_or_order_id`` (a key or an order id); wait for it.
        ``operator``: who asked, recorded in the audit record of each undo."""
        entries = self.ledger.find(key_or_order_id, command)
        with self._cond:
            for entry in entries:
                self._table.cancel(entry.ident)
        idents = [e.ident for e in entries]
        return [t.result() for t in self._submit_deletes(idents, "release", operator)]

    # -- start and stop ------------------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Bring the host in line with the ledger after a start (see the module docstring)."""
        now = self.clock.now()
        summary: Counter[str] = Counter()
        live: dict[str, list[LiveEntry]] = {}
        self.ledger.purge_offenders(now - self.config.global_.offender_window)
        for entry in self.ledger.entries():
            self._note_expiry(entry.ident, entry.expires_at)
            cmd = self.config.command_named(entry.command)
            if cmd is None:
                summary["unknown_command"] += 1
                log.warning(
                    "ledger entry %s/%s: command no longer configured; kept (release it with "
                    "`dfir-ar blocks release %s` after restoring the command)",
                    entry.command, entry.key, entry.key,
                )
                continue
            try:
                request = entry.request()
            except StateError as exc:
                summary["invalid"] += 1
                log.error("ledger entry %s/%s is invalid, not acted on: %s",
                          entry.command, entry.key, exc)
                continue
            if entry.expires_at is not None and entry.expires_at <= now:
                summary["expired"] += 1
                self._schedule(entry.ident, entry.expires_at)
                continue
            if entry.status != APPLIED:
                summary["retried_intents"] += 1
                plan = _Plan(
                    kind="add", order=self._order_of(entry), command=cmd, request=request,
                    key=entry.key, expires_at=entry.expires_at, timeout=request.timeout,
                    offences=entry.offences, retry=True,
                )
                remaining = entry.remaining(now)
                plan.request = structs.replace(request, timeout=remaining)
                self._dispatch(plan)
                continue
            summary["live"] += 1
            remaining = entry.remaining(now)
            live.setdefault(cmd.name, []).append(
                LiveEntry(request=structs.replace(request, timeout=remaining), state=entry.state or {},
                          remaining=remaining)
            )
            if entry.expires_at is not None:
                self._schedule(entry.ident, entry.expires_at)
        # Commands with nothing live are reconciled too (with an empty list), so blocks a crash
        # left behind are removed even when the ledger holds none (iptables and route-null
        # have no kernel expiry). Only built-in plug-ins that can list what is in place, and
        # only when no command with the same executable was reconciled with live entries: a
        # route-null command's empty reconcile would remove another route-null command's routes.
        # (host-deny and disable-account only re-add what is missing: an empty list is a no-op.)
        live_executables = {self.command(name).executable for name in live}
        order = list(live.items())
        for cmd in self.config.command:
            if cmd.name in live or cmd.executable in live_executables:
                continue
            if self._lists_what_is_in_place(cmd):
                order.append((cmd.name, []))
        for name, entries in order:
            try:
                report = self.responder(self.command(name)).reconcile(entries)
            except Exception as exc:  # noqa: BLE001 - a plug-in failure is recorded, not fatal
                summary["reconcile_failed"] += 1
                log.error("%s: reconcile failed: %s", name, exc)
                continue
            if report.readded:
                summary["readded"] += report.readded
            if report.removed_orphans:
                summary["removed_orphans"] += report.removed_orphans
            for note in report.notes:
                log.info("%s", note)
        for job in self.ledger.jobs():
            summary["rerun_jobs"] += 1
            self._rerun_job(job.order_id, job.command, job.request_json)
        self.wake()
        if summary:
            log.info("reconcile: %s", ", ".join(f"{k}={v}" for k, v in sorted(summary.items())))
        return dict(summary)

    def _lists_what_is_in_place(self, cmd: CommandConfig) -> bool:
        """A built-in (not external-script) responder that can say what it has in place."""
        if cmd.executable not in self._plugins and (
            cmd.executable not in self.registry.responders or self.is_collector(cmd)
        ):
            return False
        try:
            responder = self.responder(cmd)
        except Exception as exc:  # noqa: BLE001 - e.g. its tool is missing; said at first use
            log.debug("%s: not reconciled: %s", cmd.name, exc)
            return False
        cls = type(responder)
        return cls.active is not Responder.active or cls.reconcile is not Responder.reconcile

    # -- repair of purged containment ------------------------------------------------------

    def repair_due(self, now: float) -> None:
        """Every ``global.repair_interval`` seconds (monotonic ``now``), ask each responder
        with a ``check_and_repair`` whether its kernel state is still there (a config run's
        ``nft flush ruleset``), on the undo pool so timers are not held up."""
        interval = self.config.global_.repair_interval
        if interval <= 0 or now < self._next_repair:
            return
        self._next_repair = now + interval
        if self._repairing.locked():
            return  # the previous check is still running
        with contextlib.suppress(RuntimeError):  # the pool is shut down: stopping
            self._undo_pool.submit(self._repair_once)

    def _repair_once(self) -> dict[str, bool]:
        """One check of every repairable command; returns {command: repaired}."""
        out: dict[str, bool] = {}
        with self._repairing:
            seen: set[int] = set()
            for cmd in self.config.command:
                if cmd.executable not in self._plugins and (
                    cmd.executable not in self.registry.responders
                ):
                    continue
                try:
                    responder = self.responder(cmd)
                except Exception:  # noqa: BLE001, S112 - unusable plug-in: reported at first use
                    continue
                check = getattr(responder, "check_and_repair", None)
                if check is None or id(responder) in seen:
                    continue
                seen.add(id(responder))
                try:
                    repaired = bool(check(_LiveEntries(self, cmd.name)))
                except Exception as exc:  # noqa: BLE001 - retried at the next interval
                    log.error("%s: check of what is in place failed: %s", cmd.name, exc)
                    continue
                out[cmd.name] = repaired
                if repaired:
                    self.counters["repaired"] += 1
                    log.warning("%s: containment was removed by someone else; restored it",
                                cmd.name)
        return out

    def _live_entries(self, command: str) -> list[LiveEntry]:
        now = self.clock.now()
        out: list[LiveEntry] = []
        for entry in self.ledger.entries():
            if entry.command != command or entry.status != APPLIED:
                continue
            if entry.expires_at is not None and entry.expires_at <= now:
                continue
            try:
                request = entry.request()
            except StateError:
                continue
            remaining = entry.remaining(now)
            out.append(LiveEntry(request=structs.replace(request, timeout=remaining),
                                 state=entry.state or {}, remaining=remaining))
        return out

    def _rerun_job(self, order_id: str, command: str, request_json: str) -> None:
        from dfir_ar.ledger import decode_request

        try:
            cmd = self.command(command)
            request = decode_request(request_json)
        except DfirArError as exc:
            log.error("pending collection %s cannot be resumed: %s", order_id, exc)
            self.ledger.remove_job(order_id)
            return
        order = Order(id=order_id, command=command, target=request.target,
                      extra_args=request.extra_args, alert=request.alert)
        self._dispatch(_Plan(kind="collect", order=order, command=cmd, request=request))

    def active_count(self) -> int:
        with self._active_lock:
            return self._active

    def shutdown(self, *, lift: bool | None = None, wait: bool = True) -> None:
        """Stop: running work finishes; blocks stay unless ``lift`` (global.lift_on_stop)."""
        lift = self.config.global_.lift_on_stop if lift is None else lift
        with contextlib.suppress(StateError):
            self._committer.flush()  # accepted orders start before the pool closes
        self._stopping.set()
        self.wake()
        if lift:
            idents = [entry.ident for entry in self.ledger.entries()]
            for ticket in self._submit_deletes(idents, "stop"):
                ticket.result()
        for cancel in list(self._cancels):
            cancel.set()
        with self._lanes_lock:
            self._lanes_closed = True
            lanes = list(self._lanes.values())
        for pool in (*lanes, self._pool, self._collect_pool, self._undo_pool):
            pool.shutdown(wait=wait, cancel_futures=False)
        self._committer.close()


def _note_speed(shares: dict[str, float], command: str, duration: float) -> None:
    """Fold one execution into the share of ``command``'s recent executions that were fast
    in-process work. A share, not an average time: one GIL switch (5 ms) landing in a 10 us
    add would otherwise make a fast command look slow for its next twenty executions."""
    fast = 1.0 if duration < Executor.FAST_ADD else 0.0
    previous = shares.get(command)
    shares[command] = fast if previous is None else previous * 0.9 + fast * 0.1


def _mostly_fast(share: float | None) -> bool:
    """Most recent executions were fast (never timed: assume slow, a script)."""
    return share is not None and share >= 0.5


# Stands for the alert in a Wazuh input-JSON message while its frame is encoded (_log_start);
# random, so no configured name or argument can contain it.
_ALERT_SLOT = f"dfir-ar-alert-{uuid.uuid4().hex}"


class _LiveEntries(Sequence[LiveEntry]):
    """A command's live entries, read from the ledger only when first used: check_and_repair
    looks at them only when it has to repair, so the periodic check stays one cheap probe."""

    def __init__(self, executor: Executor, command: str) -> None:
        self._executor, self._command = executor, command
        self._items: list[LiveEntry] | None = None

    def _load(self) -> list[LiveEntry]:
        if self._items is None:
            self._items = self._executor._live_entries(self._command)
        return self._items

    def __len__(self) -> int:
        return len(self._load())

    @overload
    def __getitem__(self, index: int) -> LiveEntry: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[LiveEntry]: ...
    def __getitem__(self, index: int | slice) -> LiveEntry | Sequence[LiveEntry]:
        return self._load()[index]

    def __iter__(self) -> Iterator[LiveEntry]:
        return iter(self._load())


def _hostname() -> str:
    import socket

    return socket.gethostname()


def protected_networks(config: Config) -> list[IPNetwork]:
    """Config white list plus the host's own addresses, loopback and gateways (seam A rails)."""
    from dfir_ar.validate import parse_network

    g = config.global_
    nets: list[IPNetwork] = [parse_network(n) for n in g.white_list]
    return nets + host_protected_networks(own=g.protect_own_addresses, gateways=g.protect_gateway)
