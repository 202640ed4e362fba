"""A hostile alert id must not keep evidence on the host (security review finding 5): metadata is
ASCII S3 accepts, and a bundle the store keeps refusing is quarantined instead of retried
forever."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from dfir_ar.errors import StoreError
from dfir_ar.evidence.spool import QUARANTINE_AFTER, ManifestFacts, Uploader
from dfir_ar.evidence.stores.base import (
    META_VALUE_MAX,
    ObjectMeta,
    bundle_key,
    meta_value,
    open_store,
)
from tests.storage.conftest import BUCKET, PREFIX, Seaweed, make_bundle, make_config

HOSTILE_IDS = ["1700000000.1\r\nX-Injected: yes", "1700000000.\u00e9\u4e2d", "9" * 4096]


@pytest.mark.parametrize("alert_id", HOSTILE_IDS)
def test_metadata_values_are_bounded_ascii(alert_id: str) -> None:
    meta = ObjectMeta(agent_id="agent1", bundle_id="01JD3K7W0Q9X8Y7Z6A5B4C3D2E", sha256="ab" * 32,
                      rule_id=alert_id, alert_id=alert_id)
    for value in meta.as_dict().values():
        assert value.isascii() and value.isprintable() and len(value) <= META_VALUE_MAX
    back = ObjectMeta.from_dict(meta.as_dict())
    assert back is not None and back.sha256 == meta.sha256
    if len(meta_value(alert_id)) < META_VALUE_MAX:
        assert back.alert_id == alert_id  # short values survive the round trip


@pytest.mark.parametrize("alert_id", HOSTILE_IDS)
def test_hostile_alert_id_uploads_to_s3(tmp_path: Path, seaweed: Seaweed, alert_id: str) -> None:
    config = make_config(tmp_path, store=f"s3://{BUCKET}/{PREFIX}", endpoint=seaweed.endpoint,
                         identity="agent1")
    bad = make_bundle(config.spool_dir, alert_id=alert_id)
    good = make_bundle(config.spool_dir, alert_id="1700000000.2")
    uploader = Uploader(config)
    assert uploader.drain_once() == 2
    assert {u.bundle_id for u in uploader.uploaded} == {bad.bundle_id, good.bundle_id}
    info = open_store(config).head(uploader.uploaded[0].bundle_key)
    assert info is not None and info.meta is not None
    assert alert_id.startswith(info.meta.alert_id) and info.meta.alert_id


def _block_in_store(store_root: Path, bundle_id: str, manifest: Path) -> None:
    """Put different bytes where the bundle belongs: the file store refuses to overwrite
    evidence, a refusal (StoreError) that no retry can cure."""
    facts = ManifestFacts.from_json(manifest.read_bytes())
    dest = store_root / bundle_key("", facts.agent_id, facts.created, bundle_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"something else")
    meta = ObjectMeta(facts.agent_id, bundle_id, "00" * 32).as_dict()
    dest.with_name(f".{dest.name}.meta.json").write_text(json.dumps(meta))


def test_a_bundle_the_store_keeps_refusing_is_quarantined(tmp_path: Path) -> None:
    config = make_config(tmp_path, store=f"file://{tmp_path / 'store'}")
    stuck = make_bundle(config.spool_dir)
    _block_in_store(tmp_path / "store", stuck.bundle_id, stuck.manifest_path)
    for attempt in range(1, QUARANTINE_AFTER):
        good = make_bundle(config.spool_dir)
        uploader = Uploader(config)  # a new one each time, as each wazuh-ar run has
        with pytest.raises(StoreError, match="already exists"):
            uploader.drain_once()
        assert [u.bundle_id for u in uploader.uploaded] == [good.bundle_id]
        assert stuck.path.exists(), attempt
    good = make_bundle(config.spool_dir)
    uploader = Uploader(config)
    assert uploader.drain_once() == 1  # no error left: the stuck one went to quarantine
    quarantine = config.spool_dir / "quarantine"
    assert not stuck.path.exists() and not stuck.manifest_path.exists()
    kept = {p.name for p in quarantine.iterdir()}
    assert {stuck.path.name, stuck.manifest_path.name} <= kept
    assert stat.S_IMODE(quarantine.stat().st_mode) == 0o700
    assert uploader.pending() == []


def test_refusals_of_every_bundle_do_not_quarantine(tmp_path: Path) -> None:
    """Bad credentials or a missing bucket refuse everything alike: evidence stays queued."""
    config = make_config(tmp_path, store=f"file://{tmp_path / 'store'}")
    stuck = make_bundle(config.spool_dir)
    _block_in_store(tmp_path / "store", stuck.bundle_id, stuck.manifest_path)
    for _ in range(QUARANTINE_AFTER + 2):
        with pytest.raises(StoreError):
            Uploader(config).drain_once()
    assert stuck.path.exists() and not (config.spool_dir / "quarantine").exists()
    assert os.path.exists(stuck.manifest_path)
