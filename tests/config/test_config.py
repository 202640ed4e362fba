"""Config loading: whole-file validation, errors that say where and how to fix, ossec.conf import."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfir_ar.cli.main import cli
from dfir_ar.config import Location, Matching, load_config
from dfir_ar.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """
[global]
state_dir = "{tmp}/state"
white_list = ["198.51.100.10", "2001:db8:1::/48"]

[[command]]
name = "host-deny"
executable = "host-deny"
expect = ["srcip"]
timeout_allowed = true

[[active_response]]
command = "host-deny"
rules_id = [5712]
timeout = 60
repeated_offenders = [1, 2]
"""


def write(tmp_path: Path, text: str, name: str = "dfir-ar.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("{tmp}", str(tmp_path)))
    return path


def error_of(path: Path, *, check_plugins: bool = True) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, check_plugins=check_plugins)
    return str(info.value)


def test_good_config_loads(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, GOOD), check_plugins=False)
    cfg = loaded.config
    assert cfg.global_.state_dir == tmp_path / "state"
    assert cfg.active_response[0].repeated_offenders == (1, 2)
    assert cfg.global_.matching is Matching.WAZUH


def test_misspelt_command_says_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('command = "host-deny"', 'command = "host-dny"'))
    msg = error_of(path, check_plugins=False)
    assert str(path) in msg
    assert "[[active_response]] #1" in msg
    assert 'did you mean "host-deny"?' in msg


def test_unknown_key_names_block_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("state_dir =", "stat_dir ="))
    msg = error_of(path, check_plugins=False)
    assert "[global]" in msg and "'stat_dir'" in msg and 'did you mean "state_dir"?' in msg


def test_bad_white_list_entry(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"198.51.100.10"', '"198.51.100.300"'))
    msg = error_of(path, check_plugins=False)
    assert "[global], white_list" in msg and "198.51.100.300" in msg


def test_binding_that_never_fires_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("rules_id = [5712]\n", ""))
    assert "never fires" in error_of(path, check_plugins=False)


def test_more_than_five_repeated_offenders(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("[1, 2]", "[1, 2, 3, 4, 5, 6]"))
    assert "repeated_offenders" in error_of(path, check_plugins=False)


def test_executable_with_path_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('executable = "host-deny"', 'executable = "../../bin/sh"'))
    msg = error_of(path, check_plugins=False)
    assert "[[command]] #1, executable" in msg and "active_response_dir" in msg


def test_unknown_executable_is_refused_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('executable = "host-deny"', 'executable = "host-denny"'))
    msg = error_of(path)
    assert 'executable = "host-denny"' in msg and 'did you mean "host-deny"?' in msg


def test_timeout_without_timeout_allowed(tmp_path: Path) -> None:
    text = GOOD.replace("timeout_allowed = true", "timeout_allowed = false")
    wazuh = load_config(write(tmp_path, text), check_plugins=False)
    assert wazuh.config.active_response[0].timeout is None
    assert any("ignored" in w for w in wazuh.warnings)
    ossec = text.replace('state_dir = "{tmp}/state"', 'state_dir = "{tmp}/state"\nmatching = "ossec"')
    assert "timeout_allowed" in error_of(write(tmp_path, ossec, "o.toml"), check_plugins=False)


def test_white_list_opt_out_refused_for_ip_containment(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("timeout = 60\n", "timeout = 60\napply_white_list = false\n"))
    assert "apply_white_list = false" in error_of(path)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    assert "not valid TOML" in error_of(write(tmp_path, "[global\n"), check_plugins=False)
    assert "no such file" in error_of(tmp_path / "nope.toml")


def test_ossec_conf_is_read_as_is() -> None:
    cfg = load_config(EXAMPLES / "ossec.conf", check_plugins=False).config
    names = [c.name for c in cfg.command]
    assert names == ["firewall-drop", "host-deny", "disable-account", "route-null"]
    route_null = cfg.command_named("route-null")
    assert route_null is not None and route_null.executable == "route-null"
    assert cfg.command_named("disable-account").expect == ("username",)  # type: ignore[union-attr]
    ars = cfg.active_response
    assert ars[0].rules_id == (5712, 5720) and ars[0].repeated_offenders == (30, 60, 120)
    assert ars[1].rules_group == "authentication_failures|sshd" and ars[1].level == 10
    assert ars[2].disabled and ars[2].location is Location.DEFINED_AGENT and ars[2].agent_id == ("001",)
    assert ars[3].location is Location.SERVER  # "AS" alias
    assert "198.51.100.10" in cfg.global_.white_list


def test_import_prints_toml_that_loads_to_the_same_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["config", "import", "--no-check-plugins", str(EXAMPLES / "ossec.conf")]
    )
    assert result.exit_code == 0, result.output
    tomllib.loads(result.output)
    out = write(tmp_path, result.output, "imported.toml")
    a = load_config(EXAMPLES / "ossec.conf", check_plugins=False).config
    b = load_config(out, check_plugins=False).config
    assert a == b


def test_malformed_ossec_conf(tmp_path: Path) -> None:
    path = write(tmp_path, "<ossec_config><command><name>x</name></ossec_config>", "bad.conf")
    assert "not well-formed XML" in error_of(path, check_plugins=False)


@pytest.mark.parametrize("name", ["local.toml", "design.toml", "ossec.conf"])
def test_examples_pass_config_check(name: str) -> None:
    result = CliRunner().invoke(cli, ["config", "check", "-c", str(EXAMPLES / name)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_config_check_exit_code_2_on_error(tmp_path: Path) -> None:
    from dfir_ar.cli.main import main

    path = write(tmp_path, GOOD.replace('command = "host-deny"', 'command = "hostdeny"'))
    with pytest.raises(SystemExit) as info:
        main(["config", "check", "-c", str(path)])
    assert info.value.code == 2


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("DFIR_AR_CONFIG", str(path))
    from dfir_ar.config import config_path

    assert config_path(None) == path
    assert config_path("x.toml") == Path("x.toml")


def test_wazuh_agent_conf_using_dfir_ar_links_imports_to_plugins() -> None:
    # The manager-side ossec.conf has no [collectors.yara] rules (they live on the agents).
    cfg = load_config(EXAMPLES / "wazuh" / "ossec.conf", check_plugins=False).config
    execs = {c.name: c.executable for c in cfg.command}
    assert execs["dfir-firewall-drop"] == "firewall-drop"
    yara = cfg.command_named("dfir-yara")
    assert yara is not None and yara.executable == "yara"
    assert "--plugin" not in yara.extra_args


def test_collector_settings_checked_even_without_their_table(tmp_path: Path) -> None:
    text = '[global]\nstate_dir = "{tmp}/s"\n\n[[command]]\nname = "scan"\nexecutable = "yara"\n'
    msg = error_of(write(tmp_path, text))
    assert "[collectors.yara], rules" in msg and "add a [collectors.yara] table" in msg


def test_evidence_keys_must_load_at_start(tmp_path: Path) -> None:
    from dfir_ar.evidence.signing import generate_keypair

    missing = GOOD + '\n[evidence]\nsigning_key = "{tmp}/none.key"\nverify_key = "{tmp}/none.pub"\n'
    msg = error_of(write(tmp_path, missing))
    assert f"[evidence], signing_key: {tmp_path}/none.key: cannot read" in msg
    assert "dfir-ar keys generate" in msg
    assert f"[evidence], verify_key: {tmp_path}/none.pub: cannot read" in msg
    (tmp_path / "not-a-key").write_text("hello\n")
    garbage = GOOD + '\n[evidence]\nsigning_key = "{tmp}/not-a-key"\n'
    assert "not an unencrypted PEM key" in error_of(write(tmp_path, garbage))
    pair = generate_keypair(tmp_path / "keys")
    good = GOOD + f'\n[evidence]\nsigning_key = "{pair.private_path}"\nverify_key = "{pair.public_path}"\n'
    assert load_config(write(tmp_path, good)).config.evidence.signing_key == pair.private_path
