"""Suite-wide rules: tests that need root or a tool skip only with a printed reason, and in CI as
root nothing may skip (the session fails if anything did)."""

from __future__ import annotations

import os
import shutil

import pytest


def is_root() -> bool:
    return os.geteuid() == 0


def require_root() -> None:
    if not is_root():
        pytest.skip("needs root (network/mount namespaces, nftables, users); run as root")


def require_tool(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            pytest.skip(f"needs the {name!r} tool on PATH; the README test command installs it")


@pytest.fixture
def root() -> None:
    require_root()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped and os.environ.get("CI") and is_root():
        reporter.write_line(
            f"FAIL: {len(skipped)} test(s) skipped in CI as root; nothing may skip here "
            "(a skip hides a missing install step):",
            red=True,
        )
        for rep in skipped:
            reporter.write_line(f"  {rep.nodeid}: {rep.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
