"""run_collection: every way a collector can end still yields one sealed, verifiable bundle."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from dfir_ar.alert import Alert
from dfir_ar.collector import (
    ArtifactSink,
    CollectJob,
    Collector,
    CollectorContext,
    Outcome,
    Status,
)
from dfir_ar.config.models import Config
from dfir_ar.evidence.collect import BundleResult, run_collection
from dfir_ar.evidence.manifest import MEDIA_OCTETS, AgentInfo, Manifest, Trigger
from dfir_ar.evidence.signing import generate_keypair
from dfir_ar.evidence.verify import verify_bundle
from dfir_ar.ids import new_id
from dfir_ar.order import Order
from dfir_ar.responder import Target
from dfir_ar.validate import parse_ip


class Writes(Collector):
    """Writes a few chunks, reporting progress, and honours cancel."""

    name: ClassVar[str] = "writes"
    chunks: ClassVar[int] = 5
    ignore_cancel: ClassVar[bool] = False
    sleep: ClassVar[float] = 0.0
    raises: ClassVar[BaseException | None] = None

    def collect(self, job: CollectJob, sink: ArtifactSink) -> Outcome:
        with sink.artifact("out.bin", MEDIA_OCTETS) as f:
            for i in range(self.chunks):
                if self.raises is not None and i == 2:
                    raise self.raises
                if job.cancel.is_set() and not self.ignore_cancel:
                    return Outcome(Status.PARTIAL, "cancelled")
                f.write(b"%d" % i * 100)
                job.progress(f"chunk {i}", i / self.chunks)
                time.sleep(self.sleep)
        return Outcome(Status.OK, details={"chunks": self.chunks})


def _config(tmp_path: Path, **evidence: object) -> Config:
    return Config.model_validate({
        "global": {"state_dir": str(tmp_path / "state"), "agent_id": "007", "agent_name": "web1"},
        "evidence": {"min_free_mb": 0, **evidence},
    })


def _job(deadline: float = 30.0) -> CollectJob:
    return CollectJob(target=Target(srcip=parse_ip("203.0.113.7")), options={"n": 1},
                      deadline=time.monotonic() + deadline, max_bytes=1 << 30)


def _run(tmp_path: Path, cls: type[Collector], config: Config | None = None,
         job: CollectJob | None = None, grace: float = 1.0) -> tuple[BundleResult, Manifest]:
    config = config or _config(tmp_path)
    result = run_collection(cls(CollectorContext(state_dir=tmp_path)), job or _job(),
                            trigger=Trigger(srcip="203.0.113.7"), config=config, grace=grace)
    report = verify_bundle(result.path, config.evidence.verify_key)
    assert report.ok, report.problems
    assert result.path.parent == config.spool_dir / "ready"
    assert report.manifest is not None
    return result, report.manifest


def test_ok_collection_with_progress_logged(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dfir_ar.evidence.collect")
    result, m = _run(tmp_path, Writes)
    assert result.status is Status.OK
    assert m.collectors[0].arguments == {"n": 1}
    assert m.collectors[0].details == {"chunks": 5}
    assert m.agent.id == "007" and m.agent.name == "web1"
    assert m.artifacts[0].path == "artifacts/writes/out.bin"
    assert any("chunk 4" in r.getMessage() for r in caplog.records)


def test_exception_becomes_failed_with_the_error(tmp_path: Path) -> None:
    class Boom(Writes):
        raises = RuntimeError("disk exploded")

    result, m = _run(tmp_path, Boom)
    assert result.status is Status.FAILED
    assert "RuntimeError: disk exploded" in m.collectors[0].error
    assert m.artifacts[0].size == 200  # what was written before the crash is kept and hashed


def test_deadline_cancels_a_cooperative_collector(tmp_path: Path) -> None:
    class Slow(Writes):
        chunks = 100
        sleep = 0.05

    t0 = time.monotonic()
    # A 5 s grace: it returns ~50 ms after the cancel, but a loaded host must not make it late.
    result, m = _run(tmp_path, Slow, job=_job(deadline=0.5), grace=5.0)
    assert time.monotonic() - t0 < 4.5  # not the 5 s of its chunks
    assert result.status is Status.PARTIAL
    assert m.collectors[0].reason == "cancelled"


def test_collector_ignoring_cancel_is_abandoned(tmp_path: Path) -> None:
    release = threading.Event()

    class Stubborn(Writes):
        chunks = 1000
        ignore_cancel = True

        def collect(self, job: CollectJob, sink: ArtifactSink) -> Outcome:
            with sink.artifact("out.bin", MEDIA_OCTETS) as f:
                f.write(b"before the deadline")
                release.wait(10)  # ignores job.cancel entirely
                f.write(b"after the seal")  # refused: the bundle is sealed
            return Outcome(Status.OK)

    t0 = time.monotonic()
    try:
        result, m = _run(tmp_path, Stubborn, job=_job(deadline=0.3), grace=0.3)
    finally:
        release.set()
    assert time.monotonic() - t0 < 3
    assert result.status is Status.PARTIAL
    assert "abandoned" in m.collectors[0].reason
    assert m.artifacts[0].size == len(b"before the deadline")


def test_disk_floor_from_config_gives_partial_with_reason(tmp_path: Path) -> None:
    result, m = _run(tmp_path, Writes, config=_config(tmp_path, min_free_mb=1 << 40))
    assert result.status is Status.PARTIAL
    assert "min_free_mb" in m.collectors[0].reason


def test_signed_by_config_key_and_trigger_from_order(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "keys")
    config = _config(tmp_path, signing_key=str(pair.private_path),
                     verify_key=str(pair.public_path))
    _, m = _run(tmp_path, Writes, config=config)
    assert m.signed and m.signer == pair.fingerprint
    alert = Alert(rule_id=5712, level=10, groups=("sshd", "authentication_failures"),
                  id="1700000000.1234", srcip="203.0.113.7")
    order = Order(id=new_id(), command="pcap-attacker",
                  target=Target(srcip=parse_ip("203.0.113.7")), alert=alert)
    t = Trigger.from_order(order)
    assert (t.alert_id, t.rule_id, t.level, t.groups, t.srcip, t.order_id, t.command) == (
        "1700000000.1234", 5712, 10, ("sshd", "authentication_failures"), "203.0.113.7",
        order.id, "pcap-attacker")
    manual = Trigger.from_order(Order(id=new_id(), command="processes", target=Target(),
                                      operator="alice"))
    assert manual.operator == "alice" and manual.alert_id is None
    assert AgentInfo.current(config).id == "007"


def test_spool_quota_caps_the_bundle_and_a_full_spool_refuses(tmp_path: Path) -> None:
    from dfir_ar.errors import StateError

    config = _config(tmp_path, spool_quota_mb=1)
    ready = config.spool_dir / "ready"
    ready.mkdir(parents=True)
    waiting = ready / "01AAAAAAAAAAAAAAAAAAAAAAAA.tar.zst"
    # Just under 1 MiB already waiting for upload (allocated blocks are what count).
    waiting.write_bytes(b"w" * ((1 << 20) - 4096))

    class Big(Writes):
        chunks = 100

    result, m = _run(tmp_path, Big, config=config)
    assert result.status is Status.PARTIAL
    assert "spool quota" in m.collectors[0].reason
    # Now at (or past) the quota: nothing new is collected, and the error says why.
    waiting.write_bytes(b"w" * (2 << 20))
    with pytest.raises(StateError, match="spool_quota_mb"):
        run_collection(Big(CollectorContext(state_dir=tmp_path)), _job(),
                       trigger=Trigger(), config=config)
