"""The operator's CLI on the execution side, in-process (click's CliRunner; no serve running, so
`run` and `blocks release` act here on the ledger): tables on a narrow terminal, `blocks release`
(address forms, operator, exit codes), a non-root user, `serve`'s start-up checks.
The same commands through a running serve are in test_e2e.py."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from dfir_ar.cli import common
from dfir_ar.cli.main import cli, main
from dfir_ar.config import load_config
from dfir_ar.errors import UsageError
from tests.conftest import require_root, require_tool
from tests.engine.e2e import DFIR_AR, Setup, make_setup

SNAPSHOT = '\n[[command]]\nname = "snapshot"\nexecutable = "processes"\nexpect = []\n'
OPERATOR = re.compile(r"^[A-Za-z_][A-Za-z0-9_.@-]* \(uid \d+, pid \d+\)$")


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return make_setup(tmp_path, timeout=600, extra=SNAPSHOT)


def dfir_ar(setup: Setup, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-c", str(setup.config)])


def block(setup: Setup, ip: str) -> dict[str, object]:
    done = dfir_ar(setup, "run", "host-deny", "--local", "--srcip", ip, "--wait", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


@pytest.fixture
def width_100(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout is a 100-column terminal (rich draws the table, as for a user at a terminal)."""
    monkeypatch.setattr(common, "_terminal_console",
                        lambda: Console(width=100, color_system=None))


# -- #3: tables on a terminal -------------------------------------------------------------


def test_blocks_list_on_a_100_column_terminal_cuts_no_id_or_address(
    setup: Setup, width_100: None
) -> None:
    keys = ["203.0.113.10", "2001:db8::7"]
    orders = [str(block(setup, ip)["order_id"]) for ip in keys]
    listed = dfir_ar(setup, "blocks", "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert "┃" in listed.stdout  # the rich table, not the plain rows
    assert all(len(line) <= 100 for line in lines)
    for value in [*keys, *orders, "host-deny"]:
        assert any(value in line for line in lines), (value, listed.stdout)
    assert "…" not in listed.stdout
    # STATE is filled only for an intent not yet applied: none here, so no empty column.
    assert "STATE" not in listed.stdout
    # Too long to fit with the other columns readable: plain rows, which the terminal wraps.
    longest = "2001:db8:85a3:1234:5678:8a2e:370:7334"
    orders.append(str(block(setup, longest)["order_id"]))
    plain = dfir_ar(setup, "blocks", "list")
    assert "┃" not in plain.stdout and "…" not in plain.stdout
    for key, order_id in zip([*keys, longest], orders, strict=True):
        assert re.search(rf"host-deny +{re.escape(key)} .* {order_id}$", plain.stdout, re.M)


def test_a_table_too_wide_for_the_terminal_is_printed_as_plain_rows(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "_terminal_console", lambda: Console(width=40))
    ids = ["01M81WXTKN0000000000000000", "01M81WXTKN0000000000000001"]
    common.print_table(["ID", "ADDRESS", "NOTE"],
                       [(i, "2001:db8:85a3:1234:5678:8a2e:370:7334", "x y z") for i in ids],
                       whole=("ID", "ADDRESS"))
    out = capsys.readouterr().out
    assert "┃" not in out
    for i in ids:
        assert f"{i}  2001:db8:85a3:1234:5678:8a2e:370:7334  x y z" in out


def test_an_optional_column_with_a_value_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    common.print_table(["KEY", "STATE"], [("203.0.113.1", ""), ("203.0.113.2", "intent")],
                       optional=("STATE",))
    assert capsys.readouterr().out.splitlines() == [
        "KEY          STATE", "203.0.113.1", "203.0.113.2  intent",
    ]


# -- #4: a bundle collected without serve -------------------------------------------------


def test_a_collection_run_here_says_its_bundle_waits_in_the_spool(setup: Setup) -> None:
    done = dfir_ar(setup, "run", "snapshot", "--local", "--wait")
    assert done.exit_code == 0, done.output
    bundle_id = re.search(r"bundle (\w{26}) \(", done.stdout)
    assert bundle_id is not None, done.stdout
    assert (setup.state_dir / "spool" / "ready" / f"{bundle_id[1]}.tar.zst").is_file()
    assert "sealed in the spool" in done.stdout and "not uploaded" in done.stdout
    assert "`dfir-ar bundles push`" in done.stdout
    # With --json, stdout stays one JSON document; the note goes to stderr.
    as_json = dfir_ar(setup, "run", "snapshot", "--local", "--wait", "--json")
    assert json.loads(as_json.stdout)["outcome"] == "ok"
    assert "dfir-ar bundles push" in as_json.stderr


# -- #5, #6, #12: blocks release ------------------------------------------------------------


def test_release_normalises_the_address_as_run_does(setup: Setup) -> None:
    block(setup, "2001:0DB8::7")  # stored as 2001:db8::7
    released = dfir_ar(setup, "blocks", "release", "2001:0db8:0::7")
    assert released.exit_code == 0, released.output
    assert "host-deny 2001:db8::7: released" in released.stdout
    assert setup.deny_lines() == []
    block(setup, "203.0.113.5")
    mapped = dfir_ar(setup, "blocks", "release", "::ffff:203.0.113.5")
    assert mapped.exit_code == 0, mapped.output


@pytest.mark.parametrize("value", ["999.1.1.1", "2001:db8::7::1", "fe80::1%eth0", "1.2.3"])
def test_release_of_an_invalid_address_is_a_usage_error_with_the_reason(
    setup: Setup, value: str
) -> None:
    done = dfir_ar(setup, "blocks", "release", value)
    assert isinstance(done.exception, UsageError), done.output
    assert f"address {value!r}" in str(done.exception)
    assert not (setup.state_dir / "ledger.sqlite3").exists()  # refused before the ledger


def test_release_by_user_name_or_order_id_is_not_read_as_an_address(setup: Setup) -> None:
    order_id = str(block(setup, "203.0.113.6")["order_id"])
    done = dfir_ar(setup, "blocks", "release", order_id)
    assert done.exit_code == 0, done.output
    nobody = dfir_ar(setup, "blocks", "release", "alice")
    assert nobody.exit_code == 2


def test_release_records_who_released(setup: Setup) -> None:
    block(setup, "203.0.113.7")
    assert dfir_ar(setup, "blocks", "release", "203.0.113.7").exit_code == 0
    add, delete = setup.audit()
    assert delete["action"] == "delete" and delete["details"]["reason"] == "release"
    assert OPERATOR.match(str(delete["operator"])), delete
    assert f"pid {os.getpid()})" in str(delete["operator"])  # this process released it
    assert OPERATOR.match(str(add["operator"])), add  # run here: recorded the same way


def test_nothing_to_release_exits_2_and_json_still_prints_an_empty_list(setup: Setup) -> None:
    done = dfir_ar(setup, "blocks", "release", "203.0.113.99")
    assert done.exit_code == 2
    assert "nothing in the ledger matches '203.0.113.99'" in done.stderr
    as_json = dfir_ar(setup, "blocks", "release", "203.0.113.99", "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout) == []


# -- #8: not root ---------------------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory uid 65534 can read (pytest's tmp_path is under a 0700 root directory)."""
    path = Path(tempfile.mkdtemp(prefix="dfir-ar-cli-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *args],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_non_root_gets_one_line_and_exit_6_not_a_traceback(shared_dir: Path) -> None:
    require_root()
    require_tool("setpriv")
    probe = as_nobody(*DFIR_AR, "--version")
    if probe.returncode != 0:
        pytest.skip(f"uid 65534 cannot run this venv's dfir-ar here: {probe.stderr.strip()}")
    setup = make_setup(shared_dir, timeout=600)
    setup.config.chmod(0o644)
    block(setup, "203.0.113.8")  # as root: the state dir (0700) and the ledger exist
    for args in (["blocks", "list"], ["blocks", "release", "203.0.113.8"],
                 ["run", "host-deny", "--local", "--srcip", "203.0.113.9"]):
        done = as_nobody(*DFIR_AR, *args, "-c", str(setup.config))
        assert done.returncode == 6, (args, done.stderr)
        assert "Traceback" not in done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith(f"dfir-ar: error: {setup.state_dir}/"), line
        assert "permission denied" in line.lower(), line
        assert line.endswith("; dfir-ar's state is root-only: run as root"), line
    assert setup.deny_lines() == ["ALL: 203.0.113.8"]


def test_permission_error_is_one_line_from_main(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dfir_ar.ledger

    (setup.state_dir).mkdir()
    (setup.state_dir / "ledger.sqlite3").touch()

    def denied(*args: object, **kw: object) -> None:
        raise PermissionError(13, "Permission denied", str(setup.state_dir / "ledger.sqlite3"))

    monkeypatch.setattr(dfir_ar.ledger.LedgerView, "open", denied)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as exit_:
        main(["blocks", "list", "-c", str(setup.config)])
    assert exit_.value.code == 6
    assert capsys.readouterr().err == (
        f"dfir-ar: error: {setup.state_dir}/ledger.sqlite3: permission denied; "
        "dfir-ar's state is root-only: run as root\n"
    )


# -- serve's start-up: #15, #17, #18 --------------------------------------------------------


def test_serve_help_names_the_real_socket_key() -> None:
    helped = CliRunner().invoke(cli, ["serve", "--help"])
    assert "global.control_socket" in helped.output
    assert "socket_path" not in helped.output
    assert "restart serve" in helped.output  # no reload: said where a user looks


def test_serve_refuses_an_alerts_path_whose_directory_does_not_exist(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = setup.root / "nosuchdir" / "alerts.json"
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "-c", str(setup.config), "--alerts", str(typo)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--alerts {typo}" in err and f"its directory {typo.parent} exists" in err
    assert not setup.state_dir.exists()  # nothing started


def test_alert_files_not_there_yet_are_warned_about_and_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dfir_ar.cli.serve import _check_alert_paths

    # A config [[source]] whose directory Wazuh has not created yet (a fresh host, as with
    # examples/local.toml) is waited for: serve must start.
    fresh = tmp_path / "ossec" / "logs" / "alerts" / "alerts.json"
    config_file = tmp_path / "c.toml"
    config_file.write_text(f'[global]\nstate_dir = "{tmp_path / "state"}"\n\n'
                           f'[[source]]\ntype = "file"\npath = "{fresh}"\n')
    config = load_config(config_file, check_plugins=False).config
    later = tmp_path / "alerts.json"  # its directory exists
    with caplog.at_level(logging.INFO):
        _check_alert_paths(config, (later,))
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [str(fresh) in r.getMessage() for r in warned] == [True, False]
    assert str(later) in warned[1].getMessage() and "--alerts" in warned[1].getMessage()
    assert "nor does its directory" in warned[0].getMessage()
    later.write_text("")
    caplog.clear()
    _check_alert_paths(config, (later,))
    assert [str(fresh) in r.getMessage() for r in caplog.records] == [True]


def test_the_stop_line_reads_as_counts() -> None:
    from dfir_ar.service import _counts

    assert _counts({}) == "no alerts read"
    assert _counts({"alerts": 1, "orders": 2}) == "1 alert read, 2 orders"
    assert _counts({"alerts": 3, "refused": 1, "rejected": 1}) == (
        "3 alerts read, 1 refused, 1 record rejected"
    )
    assert _counts({"rejected": 2}) == "0 alerts read, 2 records rejected"


def test_plural() -> None:
    assert common.plural(1, "artifact") == "1 artifact"
    assert common.plural(0, "artifact") == "0 artifacts"
    assert common.plural(2, "entry", "entries") == "2 entries"
