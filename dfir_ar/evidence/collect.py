"""run_collection: one collection order -> one sealed bundle in ``<spool>/ready``, whatever the
collector does (returns, raises, overruns its deadline, ignores cancel).

The collector runs in a worker thread; this thread is the watchdog. At the deadline it sets
``job.cancel``; a collector that has not returned ``ABANDON_GRACE`` seconds later is abandoned
(Python threads cannot be killed): the writer cuts its open artifacts at their last complete
write, refuses further writes, and the bundle is sealed as partial (some evidence) or failed.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import replace
from typing import TYPE_CHECKING

from dfir_ar.collector import ByteCapReached, CollectJob, Collector, Outcome, Status
from dfir_ar.errors import DfirArError
from dfir_ar.evidence.bundle import BundleResult, BundleWriter, MiB
from dfir_ar.evidence.manifest import Trigger, module_version

if TYPE_CHECKING:
    from dfir_ar.config.models import Config

__all__ = ["ABANDON_GRACE", "BundleResult", "run_collection"]

log = logging.getLogger("dfir_ar.evidence.collect")

ABANDON_GRACE = 5.0
"""Seconds a collector gets after cancel to return before it is abandoned."""
_DISTRIBUTIONS = {"yara": "yara-python"}


def run_collection(
    collector: Collector,
    job: CollectJob,
    *,
    trigger: Trigger,
    config: Config,
    grace: float = ABANDON_GRACE,
) -> BundleResult:
    """Run ``collector`` under ``job``'s deadline and byte cap; always return a sealed bundle.

    Raises SpoolFull (a StateError) when the spool is already at its quota, and EvidenceError
    if the bundle itself cannot be written (spool unwritable).
    """
    from dfir_ar.evidence.spool import check_spool_quota, spool_usage

    # Nothing is collected into a full spool (SpoolFull says so, loudly); otherwise the bundle
    # may use what is left of the quota, so bundles waiting for the store cannot fill the disk.
    check_spool_quota(config)
    quota_left = config.evidence.spool_quota_mb * MiB - spool_usage(config.spool_dir)
    cap = min(job.max_bytes, config.evidence.max_bundle_mb * MiB)
    reason = None
    if quota_left < cap:
        cap = max(0, quota_left)
        reason = (f"spool quota reached (evidence.spool_quota_mb = "
                  f"{config.evidence.spool_quota_mb}; bundles are waiting for upload)")
    writer = BundleWriter.for_config(config, trigger, max_bytes=cap)
    writer.cap_reason = reason
    return run_with_writer(collector, job, writer, grace=grace)


def run_with_writer(
    collector: Collector, job: CollectJob, writer: BundleWriter, *, grace: float = ABANDON_GRACE
) -> BundleResult:
    name = collector.name
    inner_progress = job.progress

    def progress(message: str, fraction: float | None) -> None:
        pct = f" {fraction:.0%}" if fraction is not None else ""
        log.info("bundle %s %s:%s %s", writer.bundle_id, name, pct, message)
        inner_progress(message, fraction)

    run_job = replace(job, progress=progress)
    writer.begin_collector(name, collector.version, dict(job.options))
    result: list[Outcome] = []
    errors: list[str] = []

    def work() -> None:
        try:
            result.append(collector.collect(run_job, writer))
        except ByteCapReached as exc:
            # A collector that let the cap signal escape still stopped for a good reason.
            result.append(Outcome(Status.PARTIAL, str(exc)))
        except DfirArError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # any collector bug becomes a failed status, never a crash
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            errors.append(tb)
            log.exception("collector %s crashed in bundle %s", name, writer.bundle_id)

    worker = threading.Thread(target=work, name=f"collect-{name}-{writer.bundle_id}", daemon=True)
    worker.start()
    worker.join(min(max(0.0, job.remaining()), threading.TIMEOUT_MAX))
    if worker.is_alive():
        log.warning("collector %s reached its deadline; cancelling", name)
        job.cancel.set()
        worker.join(grace)
    abandoned = worker.is_alive()
    if abandoned:
        had_data = writer.bytes_written > 0
        msg = (f"collector did not stop within {grace:g}s of its deadline and was abandoned; "
               "artifacts are cut at their last complete write")
        log.error("collector %s abandoned in bundle %s", name, writer.bundle_id)
        outcome = Outcome(Status.PARTIAL if had_data else Status.FAILED, msg)
        writer.end_collector(outcome, error=msg)
    elif errors:
        writer.end_collector(Outcome(Status.FAILED, errors[0]), error=errors[0])
    elif result:
        writer.end_collector(result[0])
    else:
        writer.end_collector(Outcome(Status.FAILED, "collector returned nothing"))
    # A collector names the libraries its evidence depends on (ClassVar ``tool_modules``, e.g.
    # ("scapy",)); their versions go into the manifest's provenance.
    modules: tuple[str, ...] = tuple(getattr(collector, "tool_modules", ()))
    writer.add_tools({
        _DISTRIBUTIONS.get(module, module): version for module in modules
        if (version := module_version(module)) is not None
    })
    return writer.seal()
