"""examples/wazuh: the ossec.conf blocks parse (dfir-ar reads ossec.conf too), the agent config
validates, and install.sh makes exactly the dfir-ar-* links, leaving Wazuh's own files alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dfir_ar.cli.wazuh_ar import plugin_from_name
from dfir_ar.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wazuh"
DFIR_AR = str(Path(sys.executable).parent / "dfir-ar")


def test_example_ossec_conf_parses_and_names_link_executables() -> None:
    config = load_config(EXAMPLES / "ossec.conf", check_plugins=False).config
    by_name = {c.name: c for c in config.command}
    assert by_name["dfir-firewall-drop"].timeout_allowed
    assert by_name["dfir-pcap"].extra_args == ("--duration", "300")
    # Read by dfir-ar itself, the dfir-ar-<plugin> links (and dfir-ar-wazuh-ar --plugin NAME)
    # name the plug-ins they run.
    assert by_name["dfir-yara"].executable == "yara"
    assert by_name["dfir-yara"].extra_args[:2] == ("--memory", "srcip")
    for cmd in config.command:
        assert plugin_from_name(f"dfir-ar-{cmd.executable}") is not None, cmd.executable
    assert {ar.command for ar in config.active_response} <= set(by_name)
    text = (EXAMPLES / "ossec.conf").read_text()
    assert "<executable>dfir-ar-wazuh-ar</executable>" in text


def test_example_agent_config_validates() -> None:
    config = load_config(EXAMPLES / "dfir-ar.toml", check_plugins=False).config
    assert config.responders["disable-account"]["min_uid"] == 1000
    assert config.global_.white_list


def test_install_sh_links_only_dfir_ar_names(tmp_path: Path) -> None:
    bin_dir = tmp_path / "active-response" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "firewall-drop").write_text("#!/bin/sh\n")  # Wazuh's own, must stay
    (bin_dir / "dfir-ar-pcap").write_text("not ours\n")  # a file, not a link: left alone
    env = {"PATH": os.environ["PATH"], "DFIR_AR": DFIR_AR}
    done = subprocess.run(
        ["sh", str(EXAMPLES / "install.sh"), "-d", str(bin_dir), "host-deny", "pcap"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    assert "left alone" in done.stderr
    assert (bin_dir / "firewall-drop").read_text() == "#!/bin/sh\n"
    assert (bin_dir / "dfir-ar-pcap").read_text() == "not ours\n"
    for name in ("dfir-ar-host-deny", "dfir-ar-wazuh-ar"):
        assert os.readlink(bin_dir / name) == DFIR_AR
    bad = subprocess.run(
        ["sh", str(EXAMPLES / "install.sh"), "-d", str(bin_dir), "../evil"],
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 1 and not (tmp_path / "active-response" / "evil").exists()
