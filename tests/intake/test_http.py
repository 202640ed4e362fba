"""HttpSource on 127.0.0.1, port 0, with real HTTP requests (http.client)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dfir_ar.errors import ConfigError, TransportError
from dfir_ar.sources.http import HttpSource, parse_listen, read_token

from .conftest import EXAMPLES, Recorder, Running, wazuh_line

TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture
def server(run_source: Callable[..., Running]) -> Iterator[tuple[HttpSource, Recorder]]:
    source = HttpSource("http:test", "127.0.0.1:0", TOKEN, max_alert_bytes=4096)
    rec = Recorder()
    run_source(source, rec)
    yield source, rec


def post(source: HttpSource, body: bytes, token: str | None = TOKEN, path: str = "/alerts",
         method: str = "POST", headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    assert source.address is not None
    conn = http.client.HTTPConnection(*source.address, timeout=5)
    try:
        h = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_one_alert_is_accepted_with_202(server: tuple[HttpSource, Recorder]) -> None:
    source, rec = server
    status, body = post(source, wazuh_line(n=1))
    assert (status, body) == (202, {"accepted": 1, "refused": []})
    assert [a.id for a in rec.alerts] == ["1795334410.1"]
    assert rec.cursors == [None]


def test_pretty_printed_alert_and_json_lines(server: tuple[HttpSource, Recorder]) -> None:
    source, rec = server
    pretty = json.dumps(json.loads(wazuh_line(n=2)), indent=2).encode()
    assert post(source, pretty)[0] == 202
    lines = (EXAMPLES / "wazuh-ssh-bruteforce.json").read_bytes()
    status, body = post(source, lines)
    assert status == 202 and body["accepted"] == 11
    assert len(rec.alerts) == 12


def test_partly_bad_batch_reports_each_refusal(server: tuple[HttpSource, Recorder]) -> None:
    source, rec = server
    status, body = post(source, wazuh_line(n=1) + b'{"rule_id": 1}\n' + wazuh_line(n=3))
    assert status == 202 and body["accepted"] == 2
    assert body["refused"] == [{"record": 2, "reason": "a plain JSON alert needs rule_id and level"}]
    assert len(rec.rejected) == 1  # the engine counts it too


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b'{"rule": {"id": "5712", "level": "x"}}', "rule.level"),
        (b'{"rule": {"id": "5712", "level": 10}, "x": "\xff"}', "not UTF-8"),
        (b'{"rule": {"id": "5712", "level": 10}, "pad": "' + b"A" * 5000 + b'"}', "limit is 4096"),
    ],
)
def test_nothing_valid_is_400_with_the_reason(server: tuple[HttpSource, Recorder], payload: bytes,
                                              reason: str) -> None:
    source, rec = server
    status, body = post(source, payload)
    assert status == 400 and reason in body["error"]
    assert rec.alerts == []


def test_bearer_token_required(server: tuple[HttpSource, Recorder]) -> None:
    source, rec = server
    for token in (None, "", "wrong", TOKEN + "x", TOKEN[:-1]):
        status, body = post(source, wazuh_line(), token=token)
        assert status == 401 and "token" in body["error"]
    status, _ = post(source, wazuh_line(), headers={"Authorization": f"Basic {TOKEN}"}, token=None)
    assert status == 401
    assert rec.items == []
    assert source.counters["unauthorized"] == 6


def test_other_paths_methods_and_sizes(server: tuple[HttpSource, Recorder]) -> None:
    source, rec = server
    assert post(source, b"{}", path="/")[0] == 404
    assert post(source, b"", method="GET")[0] == 405
    assert post(source, b"")[0] == 400  # empty
    status, body = post(source, b"x" * (source.max_body_bytes + 1))
    assert status == 413 and "limit" in body["error"]
    assert rec.items == []


def test_oversized_body_is_refused_before_it_is_read(server: tuple[HttpSource, Recorder]) -> None:
    source, _ = server
    assert source.address is not None
    with socket.create_connection(source.address, timeout=5) as s:
        s.sendall(
            b"POST /alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Length: 999999999\r\n\r\n"
        )
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def test_unauthenticated_body_is_never_read(server: tuple[HttpSource, Recorder]) -> None:
    source, _ = server
    assert source.address is not None
    with socket.create_connection(source.address, timeout=5) as s:
        s.sendall(b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 401")


def test_ossec_format_bodies(run_source: Callable[..., Running]) -> None:
    source = HttpSource("http:ossec", "127.0.0.1:0", TOKEN, fmt="ossec")
    rec = Recorder()
    run_source(source, rec)
    status, body = post(source, (EXAMPLES / "ossec-ssh-bruteforce.log").read_bytes())
    assert status == 202 and body["accepted"] == 11


def test_listen_and_token_validation(tmp_path: Path) -> None:
    assert parse_listen("127.0.0.1:8787") == ("127.0.0.1", 8787)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("localhost:80", "127.0.0.1", "127.0.0.1:99999", ":80"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    with pytest.raises(ConfigError, match="at least 16"):
        read_token("short", None)
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    assert read_token(None, f) == TOKEN
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(None, tmp_path / "missing")


def test_ipv6_loopback_and_port_in_use(run_source: Callable[..., Running]) -> None:
    v6 = HttpSource("http:v6", "[::1]:0", TOKEN)
    rec = Recorder()
    run_source(v6, rec)
    assert post(v6, wazuh_line())[0] == 202
    assert v6.address is not None
    taken = HttpSource("http:taken", f"[::1]:{v6.address[1]}", TOKEN)
    r = run_source(taken, Recorder(), wait=False)
    r.thread.join(5)
    assert isinstance(r.error, TransportError) and "cannot listen" in str(r.error)


def _held_in_body(source: HttpSource) -> socket.socket:
    """An authenticated connection that announced a body and never sends it: a slot in use."""
    assert source.address is not None
    s = socket.create_connection(source.address, timeout=5)
    s.sendall(
        b"POST /alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
        + b"\r\nContent-Length: 100\r\n\r\n"
    )
    return s


def test_connection_cap_answers_503_instead_of_piling_up_threads(
    run_source: Callable[..., Running],
) -> None:
    source = HttpSource("http:cap", "127.0.0.1:0", TOKEN, max_connections=2, request_timeout=5)
    rec = Recorder()
    run_source(source, rec)
    assert source.address is not None
    held = [_held_in_body(source) for _ in range(2)]
    time.sleep(0.3)  # both past their head: authenticated, nothing left to evict
    try:
        with socket.create_connection(source.address, timeout=5) as third:
            reply = third.recv(4096)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and json.loads(body)["error"]
    finally:
        for s in held:
            s.close()
    # The held connections are gone: a request gets a thread again. Until their threads have
    # noticed, a retry may still meet the 503 (or the reset of a refused connection).
    status = 0
    for _ in range(200):
        try:
            status, _ = post(source, wazuh_line())
        except OSError:
            status = 0
        if status == 202:
            break
        time.sleep(0.01)
    assert status == 202 and source.counters["busy"] >= 1  # retries may meet 503 too


def test_slow_unauthenticated_clients_cannot_hold_the_intake(
    run_source: Callable[..., Running],
) -> None:
    """64 clients dripping one header byte at a time (slowloris) fill every slot; a legitimate
    POST still gets in at once (the oldest unfinished head is evicted), and the drippers are
    closed at the head deadline although each recv is well within request_timeout."""
    source = HttpSource("http:slow", "127.0.0.1:0", TOKEN, request_timeout=10.0, header_timeout=3.0)
    rec = Recorder()
    run_source(source, rec)
    assert source.address is not None
    slow = []
    for _ in range(64):
        s = socket.create_connection(source.address, timeout=5)
        s.sendall(b"POST /alerts HTTP/1.1\r\nX-Slow: ")
        slow.append(s)
    try:
        time.sleep(1.0)
        for s in slow:
            s.sendall(b"a")
        assert post(source, wazuh_line(n=1))[0] == 202
        closed = 0
        end = time.monotonic() + 6
        while time.monotonic() < end and closed < len(slow):
            closed = 0
            for s in slow:
                try:
                    s.sendall(b"a")
                    s.settimeout(0.01)
                    if s.recv(4096) == b"":
                        closed += 1
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    closed += 1
            time.sleep(0.2)
        assert closed == len(slow)
        assert post(source, wazuh_line(n=2))[0] == 202
    finally:
        for s in slow:
            s.close()
    assert len(rec.alerts) == 2
    assert source.counters.get("evicted", 0) >= 1 and source.counters.get("head_timeout", 0) >= 1


def _answer_then_eof(source: HttpSource, request: bytes) -> bytes:
    assert source.address is not None
    with socket.create_connection(source.address, timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /alerts HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_unauthenticated_connection_is_closed_after_one_answer(
    server: tuple[HttpSource, Recorder], request_bytes: bytes,
) -> None:
    source, _ = server
    # recv returns b"" (EOF) after the answer: no keep-alive for a client without the token.
    reply = _answer_then_eof(source, request_bytes)
    assert reply.split(b" ", 2)[1] in (b"401", b"404", b"405")


def test_request_head_is_capped_before_authentication(server: tuple[HttpSource, Recorder]) -> None:
    source, rec = server
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 900) for i in range(10))
    reply = _answer_then_eof(source, b"POST /alerts HTTP/1.1\r\nHost: x\r\n" + padding + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431")
    long_line = b"POST /alerts?" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"
    assert _answer_then_eof(source, long_line).startswith(b"HTTP/1.1 414")
    assert rec.items == []


def test_token_file_must_be_private_and_owned_by_root(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    assert read_token(None, f) == TOKEN
    for mode in (0o640, 0o604, 0o644):
        f.chmod(mode)
        with pytest.raises(ConfigError, match="chmod 0600"):
            read_token(None, f)
    f.chmod(0o600)
    os.chown(f, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by"):
        read_token(None, f)
    os.chown(f, 0, 0)
    link = tmp_path / "link"
    link.symlink_to(f)
    with pytest.raises(ConfigError, match=r"symlink|cannot read"):
        read_token(None, link)
