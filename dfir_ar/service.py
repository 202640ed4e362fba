"""The `dfir-ar serve` runtime (local mode): sources -> pipeline -> executor, plus the timeout loop,
the control socket and the evidence uploader, in one process.

Start order matters: the ledger is opened and reconciled BEFORE any source starts, so expired
blocks are lifted and live ones repaired before new alerts arrive; the control socket comes up
before the sources so `dfir-ar run` works as soon as serve says it is ready. Stop order is the
reverse; a graceful stop leaves blocks in place unless ``global.lift_on_stop`` (the next start
reconciles them), unlike OSSEC and Wazuh, which lift every block on restart.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dfir_ar.alert import Alert
from dfir_ar.arlog import AuditLog, AuditRecord
from dfir_ar.clock import Clock, SystemClock
from dfir_ar.config.models import Config
from dfir_ar.control import ControlServer, order_from_request
from dfir_ar.errors import UsageError
from dfir_ar.executor import Executor, Result, protected_networks
from dfir_ar.ledger import Ledger, StateLock
from dfir_ar.order import Order
from dfir_ar.pipeline import Decision, not_here
from dfir_ar.responder import Responder
from dfir_ar.sources.base import AlertSource, Cursor, Rejected
from dfir_ar.validate import IPNetwork

log = logging.getLogger("dfir_ar.serve")

#: How long `run --wait` over the socket may wait for one execution.
WAIT_LIMIT = 3600.0

#: Collector thresholds for a long-running serve (CPython's default is 700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Process-wide garbage-collector settings for `serve` (call once, after start-up).

    Every alert allocates a few dozen short-lived containers; with the default thresholds the
    collector runs every few alerts and, as blocks accumulate, full collections rescan every
    live entry. Measured in bench/engine: about 1.5x more alerts per CPU-second at 20k alerts.
    ``gc.freeze`` moves what start-up built (config, plug-ins, modules) out of every scan.
    """
    import gc

    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


class Service:
    """Everything `serve` runs; ``start`` then ``wait``/``stop`` (tests drive it in-process)."""

    def __init__(
        self,
        config: Config,
        *,
        extra_alerts: Sequence[Path] = (),
        clock: Clock | None = None,
        protected: Sequence[IPNetwork] | None = None,
        control: bool = True,
        responders: Mapping[str, type[Responder]] | None = None,
    ) -> None:
        self.config = config
        self.extra_alerts = tuple(extra_alerts)
        self.clock = clock or SystemClock()
        self._hostname = socket.gethostname()  # this host's agent name when none is configured
        self.protected = list(protected) if protected is not None else protected_networks(config)
        self.stop_event = threading.Event()
        self.counters: Counter[str] = Counter()
        self._decide_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._control_enabled = control
        self._extra_responders = dict(responders or {})
        self.control: ControlServer | None = None
        self.ledger: Ledger | None = None
        self.executor: Executor | None = None
        self.sources: list[AlertSource] = []
        self.errors: list[BaseException] = []
        self._lock: StateLock | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        from dfir_ar.pipeline import Pipeline
        from dfir_ar.sources import build_sources

        g = self.config.global_
        self.pipeline = Pipeline(self.config, self.protected)
        # First: nothing (not even reconcile) may touch a ledger another serve is using.
        self._lock = StateLock(g.state_dir).acquire("serve")
        self.ledger = Ledger.open(g.state_dir)
        self.executor = Executor(
            self.config, self.ledger, clock=self.clock, protected=self.protected
        )
        for name, cls in self._extra_responders.items():
            self.executor.register_responder(name, cls)
        self.audit: AuditLog = self.executor.audit
        self.sources = list(build_sources(self.config, self.ledger, list(self.extra_alerts)))
        if self._control_enabled:
            self.control = ControlServer(g.socket_path, self._dispatch_control)
            self.control.start()
        summary = self.executor.reconcile()
        self._recover_bundles()
        self._spawn("dfir-ar-timeouts", self.executor.run_timeouts, self.stop_event)
        uploader = self._start_uploader()
        for source in self.sources:
            self._spawn(f"dfir-ar-source-{source.name}", self._run_source, source)
        if not self.sources:
            log.warning("no alert sources ([[source]] blocks or --alerts): serving manual orders "
                        "(dfir-ar run) and timeouts only")
        log.info(
            "dfir-ar serve ready: agent %s, %d command(s), %d binding(s), %d source(s) [%s], "
            "ledger %s (%d live, reconcile: %s), control %s, evidence uploader %s, "
            "lift_on_stop=%s",
            g.agent_id,
            len(self.config.command),
            len(self.config.active_response),
            len(self.sources),
            ", ".join(s.name for s in self.sources) or "none",
            self.ledger.path,
            self.executor.active_count(),
            ", ".join(f"{k}={v}" for k, v in sorted(summary.items())) or "nothing to do",
            g.socket_path if self.control else "off",
            uploader,
            g.lift_on_stop,
        )

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _recover_bundles(self) -> None:
        """Seal what a crash left half-written in the spool, before the uploader looks at it."""
        from dfir_ar.evidence.bundle import recover_staging

        try:
            recovered = recover_staging(self.config)
        except Exception as exc:  # noqa: BLE001 - containment goes on; the spool is kept as is
            log.error("could not recover the evidence spool %s: %s", self.config.spool_dir, exc)
            return
        for result in recovered:
            log.warning("sealed bundle %s left by an interrupted collection (status %s)",
                        result.bundle_id, result.status)

    def _start_uploader(self) -> str:
        try:
            from dfir_ar.evidence.spool import Uploader
        except ImportError as exc:
            log.warning("evidence uploader not available in this build (%s); bundles stay in "
                        "the spool", exc)
            return "unavailable"
        try:
            uploader = Uploader(self.config)
        except Exception as exc:  # noqa: BLE001 - containment goes on without the store
            log.error("evidence store %s cannot be set up: %s; bundles stay in the spool until "
                      "the config is fixed and serve restarted", self.config.evidence.store, exc)
            return "failed"
        state = f"on ({self.config.evidence.store})"
        try:
            uploader.check_store()
        except Exception as exc:  # noqa: BLE001 - reported now; the uploader retries with back-off
            # Bad credentials or a missing bucket are reported before the first collection; a
            # store that is merely down comes back, and the uploader's back-off picks it up.
            log.error("evidence store %s failed its start-up write test: %s; bundles stay in "
                      "the spool and uploads are retried with back-off", self.config.evidence.store,
                      exc)
            state = f"retrying ({self.config.evidence.store}: start-up test failed)"
        self._spawn("dfir-ar-uploader", uploader.run, self.stop_event)
        return state

    def _run_source(self, source: AlertSource) -> None:
        try:
            source.run(_Intake(self), self.stop_event)
        except Exception as exc:  # noqa: BLE001 - any failure stops serve, loudly
            # The source stops rather than skip an alert it could not record; serve stops too
            # so a supervisor restarts it and the cursor resumes at the unrecorded alert.
            log.critical("source %s stopped: %s; stopping serve", source.name, exc)
            self.errors.append(exc)
            self.stop_event.set()
            if self.executor is not None:
                self.executor.wake()

    def wait(self) -> None:
        self.stop_event.wait()

    def stop(self) -> None:
        self.stop_event.set()
        if self.executor is not None:
            self.executor.wake()
        for thread in self._threads:
            if thread.name.startswith("dfir-ar-source"):
                thread.join(timeout=5)
        if self.control is not None:
            self.control.stop()
        if self.executor is not None:
            self.executor.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.ledger is not None:
            self.ledger.close()
        if self._lock is not None:
            self._lock.release()
            # Only a serve that ran says it stopped (one refused by the lock did not run).
            log.info("dfir-ar serve stopped: %s", _counts(self.counters))

    # -- the source handler (seam A) -----------------------------------------------------

    def handle_many(self, items: Sequence[Alert | Rejected], cursor: Cursor | None) -> None:
        """The records of one read, in order, with the cursor just after the last: their orders
        and the cursor are recorded in one ledger transaction (all or none), so a batch costs
        one hand-off to the ledger writer instead of one per alert."""
        assert self.executor is not None and self.ledger is not None
        # Each alert's decisions, in order; logged, audited and filtered after the lock, so a
        # flood of refusals does not hold up other sources on file writes.
        decided: list[tuple[Alert, Decision]] = []
        with self._decide_lock:
            # Read under the lock: a source that waited for it must not decide (and make order
            # ids) with a time older than the batch before it.
            now = self.clock.now()
            for item in items:
                if not isinstance(item, Alert):
                    self.counters["rejected"] += 1
                    log.warning("rejected alert record: %s: %s", item.reason, item.excerpt)
                    continue
                self.counters["alerts"] += 1
                decided.extend((item, d) for d in self.pipeline.decide(item, now))
        orders: list[Order] = []
        for item, d in decided:
            if d.order is not None:
                if self._runs_here(d.order):
                    orders.append(d.order)
                continue
            self.counters["refused"] += 1
            log.warning(
                "alert %s (rule %s, srcip %r): %s not run: %s",
                item.id, item.rule_id, item.srcip, d.command or "response", d.refused,
            )
            _audit_refusal(self.audit, now, item, d.command, d.refused or "")
        self.counters["orders"] += len(orders)
        if orders or cursor is not None:
            # Even with no order (a rejected record, a refused alert) the cursor goes through
            # the executor's committer, in order behind the alerts read before it: a cursor
            # written directly could overtake their intents.
            self.executor.accept(orders, cursor=cursor)

    def _runs_here(self, order: Order) -> bool:
        g = self.config.global_
        reason = not_here(order, g.agent_id, g.agent_name or self._hostname)
        if reason is None:
            return True
        self.counters["not_here"] += 1
        log.warning("order %s (%s): not run: %s", order.id, order.command, reason)
        if order.alert is not None:
            _audit_refusal(self.audit, self.clock.now(), order.alert, order.command, reason)
        return False

    # -- the control socket ------------------------------------------------------------

    def _dispatch_control(self, req: dict[str, Any], operator: str) -> dict[str, Any]:
        assert self.executor is not None
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "active": self.executor.active_count(),
                    "pending_timeouts": self.executor.pending()}
        if op == "run":
            order = order_from_request(self.config, req, operator)
            log.warning("manual order %s: %s by %s", order.id, order.command, operator)
            ticket = self.executor.submit(order)
            if not req.get("wait"):
                if ticket.done():
                    return _result_response(ticket.result())
                return {"ok": True, "accepted": True, "order_id": order.id}
            return _result_response(ticket.result(timeout=WAIT_LIMIT))
        if op == "release":
            key = req.get("key")
            command = req.get("command")
            if not isinstance(key, str) or not key or len(key) > 256:
                raise UsageError("release needs a key or an order id")
            if command is not None and not isinstance(command, str):
                raise UsageError("command must be a string")
            log.warning("release %s%s by %s", key, f" ({command})" if command else "", operator)
            results = self.executor.release(key, command, operator=operator)
            return {"ok": all(r.ok for r in results), "found": len(results),
                    "results": [r.as_dict() for r in results]}
        raise UsageError(f"unknown control operation {op!r}")


class _Intake:
    """The handler serve gives its sources: one record at a time, or a read's records at once
    (``many``, see dfir_ar.sources.base.BatchHandler)."""

    __slots__ = ("_service",)

    def __init__(self, service: Service) -> None:
        self._service = service

    def __call__(self, item: Alert | Rejected, cursor: Cursor | None) -> None:
        self._service.handle_many([item], cursor)

    def many(self, items: Sequence[Alert | Rejected], cursor: Cursor | None) -> None:
        self._service.handle_many(items, cursor)


_COUNTED = (
    ("alerts", "alert read", "alerts read"),
    ("orders", "order", "orders"),
    ("refused", "refused", "refused"),
    ("not_here", "not for this host", "not for this host"),
    ("rejected", "record rejected", "records rejected"),
)


def _counts(counters: Mapping[str, int]) -> str:
    """The stop line's summary: ``3 alerts read, 2 orders, 1 refused`` (``no alerts read``)."""
    parts = [f"{counters.get(key, 0)} {one if counters.get(key, 0) == 1 else many}"
             for key, one, many in _COUNTED if counters.get(key, 0) or key == "alerts"]
    parts += [f"{n} {key}" for key, n in sorted(counters.items())
              if n and key not in {k for k, _, _ in _COUNTED}]
    return ", ".join(parts) if counters.get("alerts", 0) or len(parts) > 1 else "no alerts read"


def _result_response(result: Result) -> dict[str, Any]:
    return {"ok": result.ok, "result": result.as_dict(), "error": result.error}


def _audit_refusal(audit: AuditLog, now: float, alert: Alert, command: str, reason: str) -> None:
    """An intake-side refusal (white list, bad srcip, ...) as an audit record: nothing ran."""
    audit.write(
        AuditRecord(time=now, order_id="", command=command, action="refused", key=None,
                    outcome="refused", error=reason, srcip=None if alert.srcip is None else alert.srcip[:80],
                    alert_id=alert.id, rule_id=alert.rule_id)
    )
