"""Collections through the executor (seam B): the real `processes` collector, a sealed bundle in
the spool, verified; the job row is gone once the bundle is sealed."""

from __future__ import annotations

from pathlib import Path

from dfir_ar.arlog import read_audit
from dfir_ar.clock import SystemClock
from dfir_ar.config.models import Config
from dfir_ar.evidence.verify import verify_bundle
from dfir_ar.executor import Executor
from dfir_ar.ids import new_id
from dfir_ar.ledger import Ledger
from dfir_ar.order import Order
from dfir_ar.responder import Target
from dfir_ar.validate import parse_ip
from tests.engine.conftest import engine_config


def test_collection_order_seals_a_verified_bundle(tmp_path: Path) -> None:
    raw = engine_config(tmp_path).model_dump(by_alias=True, mode="json")
    raw["command"].append({"name": "snapshot", "executable": "processes", "expect": []})
    raw["evidence"] = {"store": f"file://{tmp_path / 'store'}"}
    config = Config.model_validate(raw)
    ledger = Ledger.open(config.global_.state_dir)
    executor = Executor(config, ledger, clock=SystemClock(), protected=[])
    try:
        order = Order(id=new_id(), command="snapshot",
                      target=Target(srcip=parse_ip("203.0.113.5")), operator="tester")
        result = executor.submit(order).result(timeout=120)
        assert result.action == "collect" and result.outcome == "ok", result.error
        bundle = Path(str(result.details["path"]))
        assert bundle.parent == config.spool_dir / "ready" and bundle.exists()
        report = verify_bundle(bundle, None)
        assert report.ok, report.problems
        assert report.manifest is not None
        assert report.manifest.trigger.order_id == order.id
        assert ledger.jobs() == []
        [rec] = read_audit(config.global_.log_dir / "audit.jsonl")
        assert rec["details"]["bundle_id"] == result.details["bundle_id"]
    finally:
        executor.shutdown(lift=False)
        ledger.close()
