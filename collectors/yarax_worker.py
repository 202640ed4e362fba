"""A YARA-X scanning process: reads batches of file paths on a pipe, answers one frame a batch.

Why a process: the yara-x binding holds the GIL while it scans, so threads do not add cores;
each worker process scans on its own core with its own Scanner. Started by
collectors/yarax_engine.py as ``python -I -S yarax_worker.py RULES_FD IN_FD OUT_FD SETTINGS``
(-S: no site import, ~15 ms less start-up; the parent passes the sys.path entries it needs).
The compiled rules come as a memfd holding ``Rules.serialize_into`` output, read once.

Frames both ways: 4-byte big-endian length, then JSON (paths keep undecodable bytes as lone
surrogates, which JSON escapes and restores). In: {"timeout", "files": [path, ...]} (the
size cap comes once, in SETTINGS). Out: {"clean", "clean_bytes", "results": [[target, matches, scanned, error,
kind], ...]}: clean files only counted, as the libyara threads do. JSON out, not pickle: the
parent decodes what a process that parsed hostile files sends, so it must not run code.
EOF on the input ends the worker.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any

LIBYARA_MAX_MATCH_DATA = 512
"""yara-python keeps at most this many bytes of each match; the same cap keeps data_hex equal."""

_HEADER = struct.Struct("!I")


#: Largest frame either side accepts: a reply lists at most one batch's matches (each match's
#: data capped), so a bigger length can only come from a broken or subverted peer.
MAX_FRAME = 256 * 1024 * 1024


def read_frame(fd: int, max_size: int = MAX_FRAME) -> bytes | None:
    """One frame's payload; None at a clean EOF before a frame (raises EOFError mid-frame and
    ValueError for a length over ``max_size``, before reading or allocating it)."""
    head = _read_exact(fd, _HEADER.size, eof_ok=True)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > max_size:
        raise ValueError(f"frame of {size} bytes; at most {max_size}")
    body = _read_exact(fd, size, eof_ok=False)
    assert body is not None
    return body


def _read_exact(fd: int, size: int, *, eof_ok: bool) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = os.read(fd, size - len(buf))
        if not chunk:
            if eof_ok and not buf:
                return None
            raise EOFError(f"pipe closed {len(buf)} bytes into a {size}-byte read")
        buf += chunk
    return bytes(buf)


def frame_bytes(payload: bytes) -> bytes:
    """``payload`` as one frame: its length, then the bytes."""
    return _HEADER.pack(len(payload)) + payload


def write_frame(fd: int, payload: bytes) -> None:
    data = memoryview(frame_bytes(payload))
    while data:
        data = data[os.write(fd, data):]


def _json_default(value: object) -> object:
    if isinstance(value, bytes):  # a metadata value that is not text
        return value.decode("utf-8", "replace")
    raise TypeError(f"not JSON: {type(value).__name__}")


def main(argv: list[str]) -> int:
    rules_fd, in_fd, out_fd = int(argv[1]), int(argv[2]), int(argv[3])
    settings: dict[str, Any] = json.loads(argv[4])
    sys.path[:0] = settings["sys_path"]
    try:
        import io

        import yara_x

        from collectors.yara_file import (
            ScanResult,
            file_result,
            matched_target,
            open_regular,
            read_small,
        )

        # pread, not read: the workers share the descriptor's file offset.
        blob = _pread_all(rules_fd)
        os.close(rules_fd)
        rules = yara_x.Rules.deserialize_from(io.BytesIO(blob))
        scanner = yara_x.Scanner(rules)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which names it in the outcome
        write_frame(out_fd, json.dumps({"fatal": f"cannot start: {exc!r}"}).encode())
        return 1
    max_instances = int(settings["max_instances"])
    max_data = min(int(settings["max_data_bytes"]), LIBYARA_MAX_MATCH_DATA)

    def records(found: Any, data: bytes | None, fd: int) -> list[dict[str, Any]]:
        out = []
        for rule in found.matching_rules:
            strings = []
            for pattern in rule.patterns:
                matches = pattern.matches
                if not matches:
                    continue
                instances = []
                for m in matches[:max_instances]:
                    want = min(m.length, max_data)
                    chunk = data[m.offset : m.offset + want] if data is not None else (
                        os.pread(fd, want, m.offset) if want else b""
                    )
                    inst: dict[str, Any] = {"offset": m.offset, "length": m.length,
                                            "data_hex": chunk.hex()}
                    if m.xor_key:
                        inst["xor_key"] = m.xor_key
                    instances.append(inst)
                strings.append({"identifier": pattern.identifier,
                                "instances_total": len(matches), "instances": instances})
            out.append({"rule": rule.identifier, "namespace": rule.namespace,
                        "tags": list(rule.tags), "meta": dict(rule.metadata), "strings": strings})
        return out

    max_size = int(settings["max_size"])
    while (frame := read_frame(in_fd)) is not None:
        batch = json.loads(frame)
        scanner.set_timeout(int(batch["timeout"]))
        clean = clean_bytes = 0
        results: list[ScanResult] = []
        for path in batch["files"]:
            opened = open_regular(path, max_size)
            if isinstance(opened, ScanResult):
                results.append(opened)
                continue
            fd, st = opened
            try:
                size = st.st_size
                data: bytes | None = None
                try:
                    data = read_small(fd, size)
                    if data is not None:
                        size = len(data)
                        found = scanner.scan(data)
                    else:
                        found = scanner.scan_file(f"/proc/self/fd/{fd}")
                except yara_x.TimeoutError:
                    results.append(file_result(path, "per-file timeout", "timeout", size))
                    continue
                except (yara_x.ScanError, OSError) as exc:
                    results.append(file_result(path, str(exc), "unreadable"))
                    continue
                if not found.matching_rules:
                    clean += 1
                    clean_bytes += size
                    continue
                target = matched_target(path, st, data, fd)
                results.append(ScanResult(target, records(found, data, fd), size))
            finally:
                os.close(fd)
        reply = {
            "clean": clean,
            "clean_bytes": clean_bytes,
            "results": [[r.target, r.matches, r.scanned_bytes, r.error, r.kind] for r in results],
        }
        write_frame(out_fd, json.dumps(reply, default=_json_default).encode())
    return 0


def _pread_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    buf = bytearray()
    while len(buf) < size:
        chunk = os.pread(fd, size - len(buf), len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown: nothing is buffered, and it costs ~20 ms
