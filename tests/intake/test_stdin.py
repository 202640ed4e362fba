from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from dfir_ar.errors import ConfigError
from dfir_ar.sources.stdin import StdinSource

from .conftest import EXAMPLES, Recorder, wazuh_line


def test_stdin_reads_until_eof_including_a_last_line_without_newline() -> None:
    r, w = os.pipe()
    rec = Recorder()
    stop = threading.Event()
    t = threading.Thread(target=StdinSource(fd=r).run, args=(rec, stop))
    t.start()
    try:
        os.write(w, wazuh_line(n=0) + b"garbage\n")
        rec.wait_for(2)
        os.write(w, wazuh_line(n=1).rstrip(b"\n"))
        time.sleep(0.05)
        assert len(rec.items) == 2  # not complete until EOF
        os.close(w)
        t.join(5)
        assert not t.is_alive()
    finally:
        stop.set()
        os.close(r)
    assert [a.id for a in rec.alerts] == ["1795334410.0", "1795334410.1"]
    assert len(rec.rejected) == 1 and rec.cursors == [None, None, None]


def test_stdin_stops_when_asked_and_reads_ossec_blocks() -> None:
    r, w = os.pipe()
    rec = Recorder()
    stop = threading.Event()
    t = threading.Thread(target=StdinSource(fd=r, poll_interval=0.01).run, args=(rec, stop))
    t.start()
    try:
        os.write(w, (EXAMPLES / "ossec-ssh-bruteforce.log").read_bytes())
        rec.wait_for(11)
        stop.set()
        t.join(5)
        assert not t.is_alive()
    finally:
        os.close(w)
        os.close(r)


def test_stdin_without_an_open_standard_input_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(ConfigError, match="needs an open standard input"):
        StdinSource().run(Recorder(), threading.Event())
