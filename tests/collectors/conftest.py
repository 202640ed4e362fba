"""Fixtures every collector test can use: a spool in tmp_path and a BundleWriter already begun
for the collector under test. Seal with ``tests.evidence.helpers.seal(writer, outcome)``, which
also verifies the sealed bundle; read artifacts back with ``extract_artifact``/``read_members``.

    def test_x(bundle_writer):
        writer = bundle_writer("yara")
        outcome = YaraScan(ctx).collect(job, writer)
        result, report = seal(writer, outcome)
        assert report.ok, report.problems
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dfir_ar.evidence.bundle import BundleWriter
from tests.evidence.helpers import make_writer


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def bundle_writer(spool_dir: Path) -> Callable[..., BundleWriter]:
    """Factory: ``bundle_writer(collector_name, max_bytes=..., min_free_bytes=..., ...)``."""

    def factory(collector: str = "test", **kwargs: Any) -> BundleWriter:
        return make_writer(spool_dir, collector, **kwargs)

    return factory
