"""YARA-X for the yara collector's file scan: compiling the rules, and the worker processes.

Why: on the bench tree YARA-X scans ~1.8x the bytes of libyara per CPU-second, but its Python
binding holds the GIL while it scans, so it runs in worker processes (collectors/yarax_worker.py),
one per scanning thread, each fed batches of paths by a thread of the collection (the "proxy"
in yara_scan._Run). Process memory stays on libyara: YARA-X cannot scan a pid.

Compiled rules are cached like libyara's (in-process, and ``<digest>.yrx`` in the disk cache),
keyed by a digest that includes the yara-x version; the workers get them through a memfd.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import collectors
from collectors.yara_file import BatchDone, ScanResult
from collectors.yara_work import FileBatch
from collectors.yarax_worker import MAX_FRAME, frame_bytes

WORKER = str(Path(__file__).with_name("yarax_worker.py"))
FRAME_HEADER = 4  # a frame's big-endian length (yarax_worker._HEADER)
STOP_WAIT = 2.0
"""Seconds a worker may take to exit after its input is closed before it is killed."""

_compiled: dict[str, bytes] = {}
"""Serialized YARA-X rules by digest, for the life of the process."""
_refused: dict[str, str] = {}
"""Why YARA-X refused the rules of a digest (so a refusal is not recompiled every time)."""
_lock = threading.Lock()


class WorkerDied(Exception):
    """A worker process exited, was killed, or sent something that is not a reply."""


def version() -> str | None:
    """The installed yara-x version, or None when it cannot be imported."""
    try:
        import yara_x  # noqa: F401
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("yara-x")
    except PackageNotFoundError:
        return "unknown"


def compile_rules(files: Sequence[Path], digest: str, cache_dir: Path | None) -> bytes:
    """YARA-X's serialized rules for ``files`` (one namespace per file, as with libyara).

    Raises ValueError naming the file and line YARA-X refuses: ``yara-x refuses
    /etc/dfir-ar/rules/x.yar(3): invalid regular expression: unrecognized escape sequence``.
    """

    with _lock:
        if digest in _compiled:
            known = _compiled[digest]
            if cache_dir is not None and not (cache_dir / f"{digest}.yrx").exists():
                _save(known, cache_dir / f"{digest}.yrx")
            return known
        if digest in _refused:
            raise ValueError(_refused[digest])
        cached = cache_dir / f"{digest}.yrx" if cache_dir is not None else None
        blob = _load(cached) if cached is not None else None
        if blob is None:
            try:
                blob = _compile(files)
            except ValueError as exc:
                _refused[digest] = str(exc)
                raise
            if cached is not None:
                _save(blob, cached)
        _compiled[digest] = blob
        return blob


def _compile(files: Sequence[Path]) -> bytes:
    import io

    import yara_x

    # No includes: the caller leaves rules that use them to libyara (resolved differently).
    compiler = yara_x.Compiler(includes_enabled=False)
    for path in files:
        try:
            source = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"yara-x refuses {path}: not UTF-8 text ({exc.reason} at byte "
                             f"{exc.start})") from None
        except OSError as exc:
            raise ValueError(f"rules: cannot read {path}: {exc.strerror}") from None
        compiler.new_namespace(str(path))
        try:
            compiler.add_source(source, origin=str(path))
        except yara_x.CompileError as exc:
            raise ValueError(_describe(compiler.errors(), exc, path)) from None
    out = io.BytesIO()
    compiler.build().serialize_into(out)
    return out.getvalue()


def _describe(errors: Any, exc: Exception, path: Path) -> str:
    """The first error as ``file(line): title: label`` (yara-x's own text is multi-line)."""
    try:
        first = errors[0]
        label = first["labels"][0] if first.get("labels") else {}
        where = f"{label.get('code_origin') or path}({first['line']})"
        detail = f": {label['text']}" if label.get("text") else ""
        return f"yara-x refuses {where}: {first['title']}{detail}"
    except (IndexError, KeyError, TypeError):
        return f"yara-x refuses {path}: {str(exc).splitlines()[0]}"


def _load(path: Path) -> bytes | None:
    import io

    import yara_x

    try:
        blob = path.read_bytes()
        yara_x.Rules.deserialize_from(io.BytesIO(blob))  # corrupt or another version: recompile
    except Exception:  # noqa: BLE001 - unreadable, or whatever the binding raises: recompile
        return None
    return blob


def _save(blob: bytes, path: Path) -> None:
    """Write the compiled cache atomically; a cache that cannot be written only costs time."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)


def rules_memfd(blob: bytes) -> int:
    """A close-on-exec memfd holding ``blob`` (handed to each worker; no pipe write to block)."""
    fd = os.memfd_create("dfir-ar-yarax-rules", os.MFD_CLOEXEC)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def worker_sys_path() -> list[str]:
    """What a worker started with -S needs on sys.path: this package and yara_x."""
    import yara_x

    return [
        str(Path(collectors.__file__).resolve().parent.parent),
        str(Path(yara_x.__file__).resolve().parent.parent),
    ]


class WorkerProcess:
    """One worker process and its two pipes; the caller sends batches and reads the replies."""

    def __init__(self, rules_fd: int, settings: dict[str, Any]) -> None:
        in_r, self._w = os.pipe()
        self._r, out_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", WORKER, str(rules_fd), str(in_r), str(out_w),
                 json.dumps(settings)],
                pass_fds=(rules_fd, in_r, out_w), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, close_fds=True,
            )
        except BaseException:
            os.close(self._w)
            os.close(self._r)
            raise
        finally:
            os.close(in_r)
            os.close(out_w)
        # Neither end ever blocks this side: a batch frame waits in _out while the worker is
        # busy writing a reply (both can be larger than a pipe holds), a reply collects in _in.
        os.set_blocking(self._w, False)
        self._out = bytearray()
        self._in = bytearray()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, batch: FileBatch, timeout: int) -> None:
        """Queue a batch for the worker; written as the pipe takes it (see poll)."""
        frame = {"timeout": timeout, "files": [f.path for f in batch.files]}
        self._out += frame_bytes(json.dumps(frame).encode())
        self._flush()

    def _flush(self) -> None:
        try:
            while self._out:
                del self._out[:os.write(self._w, self._out)]
        except BlockingIOError:
            pass
        except OSError as exc:  # EPIPE: it exited
            raise WorkerDied(self._exit_text(f"input pipe: {exc.strerror}")) from None

    def readable(self, wait: float) -> bool:
        ready, _, _ = select.select([self._r], [], [], wait)
        return bool(ready)

    def poll(self, wait: float) -> BatchDone | None:
        """The next whole reply, or None after at most ``wait`` seconds; meanwhile queued batches
        are written as the pipe takes them. Never blocks longer, so the caller checks its
        deadline at least that often even against a worker that stalls mid-frame.
        WorkerDied if the process ended or sent something that is not a reply."""
        reply = self._next_reply()
        if reply is not None:
            return reply
        readable, writable, _ = select.select([self._r], [self._w] if self._out else [], [], wait)
        if writable:
            self._flush()
        if readable:
            try:
                chunk = os.read(self._r, 1 << 20)
            except OSError as exc:
                raise WorkerDied(self._exit_text(f"reply pipe: {exc.strerror}")) from None
            if not chunk:
                raise WorkerDied(self._exit_text(
                    f"reply cut short ({len(self._in)} bytes of a frame)" if self._in else "exited"
                ))
            self._in += chunk
        return self._next_reply()

    def _next_reply(self) -> BatchDone | None:
        if len(self._in) < FRAME_HEADER:
            return None
        size = int.from_bytes(self._in[:FRAME_HEADER], "big")
        if size > MAX_FRAME:
            raise WorkerDied(self._exit_text(f"reply of {size} bytes; at most {MAX_FRAME}"))
        if len(self._in) < FRAME_HEADER + size:
            return None
        frame = bytes(self._in[FRAME_HEADER:FRAME_HEADER + size])
        del self._in[:FRAME_HEADER + size]
        try:
            return decode_reply(frame)
        except ValueError as exc:
            raise WorkerDied(self._exit_text(str(exc))) from None

    def _exit_text(self, what: str) -> str:
        try:
            code = self.proc.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            return f"yara-x worker {self.pid}: {what}; killed"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"yara-x worker {self.pid}: {what}, killed by {signal.Signals(-code).name}"
        return f"yara-x worker {self.pid}: {what}, exit status {code}"

    def close(self, kill: bool) -> None:
        """End the worker (EOF on its input, or SIGKILL with ``kill``) and reap it."""
        if kill:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(OSError):
            os.close(self._w)
        # Its end of the reply pipe closes as it exits: wait for that (Popen.wait with a timeout
        # polls with sleeps of up to 50 ms), then reap.
        deadline = time.monotonic() + STOP_WAIT
        with contextlib.suppress(OSError):
            while (left := deadline - time.monotonic()) > 0 and self.readable(left):
                if not os.read(self._r, 1 << 16):
                    break
        with contextlib.suppress(OSError):
            os.close(self._r)
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 0.05)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# What a file's result can be (a process's "vanished" never comes from a worker).
_FILE_KINDS = frozenset({"", "unreadable", "timeout", "skipped"})


def decode_reply(frame: bytes) -> BatchDone:
    """A worker's reply, checked for shape (it comes from a process that parsed hostile files)."""
    try:
        reply = json.loads(frame)
    except ValueError:
        raise ValueError("reply is not JSON") from None
    if not isinstance(reply, dict):
        raise ValueError("reply is not an object")
    if "fatal" in reply:
        raise ValueError(str(reply["fatal"]))
    clean, clean_bytes, raw = reply.get("clean"), reply.get("clean_bytes"), reply.get("results")
    if not (isinstance(clean, int) and isinstance(clean_bytes, int) and isinstance(raw, list)
            and clean >= 0 and clean_bytes >= 0):
        raise ValueError("reply lacks clean, clean_bytes or results")
    results = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 5):
            raise ValueError("malformed result")
        target, matches, scanned, error, kind = item
        if not (isinstance(target, dict) and target.get("type") == "file"
                and isinstance(target.get("path"), str) and isinstance(matches, list)
                and isinstance(scanned, int) and scanned >= 0 and isinstance(error, str)
                and kind in _FILE_KINDS):
            raise ValueError("malformed result")
        results.append(ScanResult(target, matches, scanned, error, kind))
    return BatchDone(clean, clean_bytes, results)


def lost_batch(batch: FileBatch, why: str) -> BatchDone:
    """The files of a batch a dead worker held, each recorded as not scanned and why."""
    from collectors.yara_file import file_result

    return BatchDone(0, 0, [file_result(f.path, why, "unreadable") for f in batch.files])
