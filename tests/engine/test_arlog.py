"""active-responses.log and audit.jsonl: Wazuh line format, one record per write, logrotate."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from dfir_ar.arlog import ActiveResponseLog, AuditLog, AuditRecord, _AppendFile, read_audit


def test_wazuh_line_format_and_no_forged_lines(tmp_path: Path) -> None:
    log = ActiveResponseLog(tmp_path)
    hostile = {"data": {"srcip": "1.2.3.4\n2026/01/01 00:00:00 active-response/bin/x: Ended"}}
    log.write(1_700_000_000.0, "host-deny", "Starting", json.dumps(hostile), "Ended")
    log.close()
    lines = (tmp_path / "active-responses.log").read_text().splitlines()
    assert len(lines) == 3  # the newline inside the alert cannot start a line of its own
    pattern = re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} active-response/bin/host-deny: ")
    assert all(pattern.match(line) for line in lines)


def test_parallel_writers_never_interleave(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)

    def writer(n: int) -> None:
        for i in range(200):
            audit.write(AuditRecord(time=float(i), order_id=f"o{n}-{i}", command="c" * 300,
                                    action="add", key=str(i), outcome="ok"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit.close()
    records = read_audit(tmp_path / "audit.jsonl")
    assert len(records) == 1600
    assert len({r["order_id"] for r in records}) == 1600


def test_follows_logrotate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_AppendFile, "ROTATION_CHECK", 0.0)
    monkeypatch.setattr(_AppendFile, "RETIRE_AFTER", 0.0)
    log = ActiveResponseLog(tmp_path)
    log.write(1.0, "x", "before")
    (tmp_path / "active-responses.log").rename(tmp_path / "active-responses.log.1")
    log.write(2.0, "x", "after")
    log.write(3.0, "x", "again")  # the retired descriptor is closed by now
    log.close()
    assert (tmp_path / "active-responses.log.1").read_text().endswith("x: before\n")
    assert [line.rsplit(": ", 1)[1] for line in
            (tmp_path / "active-responses.log").read_text().splitlines()] == ["after", "again"]


def test_free_text_cannot_forge_a_line(tmp_path: Path) -> None:
    """A script's stderr ends up in an 'Error:' message: its line breaks are escaped."""
    log = ActiveResponseLog(tmp_path)
    stderr = ("cannot handle: ssh fail\n2026/11/22 08:00:00 active-response/bin/firewall-drop: "
              '{"command":"delete"}\r\x85\u2028\x1b[2K')
    log.write(1_700_000_000.0, "echo-fail", f"Error: {stderr}", "Aborted")
    log.close()
    lines = (tmp_path / "active-responses.log").read_text().splitlines()
    assert len(lines) == 2 and lines[1].endswith("echo-fail: Aborted")
    assert "ssh fail\\n2026/11/22" in lines[0] and "\\r\\x85\\u2028\\x1b[2K" in lines[0]


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_a_planted_log_file_is_refused_and_its_target_untouched(tmp_path: Path,
                                                                plant: str) -> None:
    """Wazuh's logs dir belongs to the wazuh account: root must not append through a link
    planted there (that appended alert text to a file root sources)."""
    import os

    from dfir_ar.errors import StateError

    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "active-responses.log"
    if plant == "symlink":
        path.symlink_to(victim)
    elif plant == "hardlink":
        os.link(victim, path)
    else:
        os.mkfifo(path)
    with pytest.raises(StateError, match="refusing"):
        ActiveResponseLog(logs)
    assert victim.read_text() == "root's file\n"


def test_a_link_planted_at_rotation_is_not_followed(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_AppendFile, "ROTATION_CHECK", 0.0)
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    log = ActiveResponseLog(tmp_path)
    log.write(1.0, "x", "before")
    (tmp_path / "active-responses.log").rename(tmp_path / "active-responses.log.1")
    (tmp_path / "active-responses.log").symlink_to(victim)
    log.write(2.0, "x", "after")  # goes on in the file open before; nothing lost
    log.close()
    assert victim.read_text() == "root's file\n"
    assert (tmp_path / "active-responses.log.1").read_text().endswith("x: after\n")
