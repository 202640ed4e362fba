"""YARA collector: scan configured paths and process memory with rules compiled once.

Rules are compiled when the config is validated (so an invalid rule is a ``dfir-ar config check``
error naming the file and line, never an alert-time surprise) and cached by the SHA-256 of their
sources (plus included files and the libyara version): in-process, and on disk with yara.save /
yara.load under ``<state_dir>/yara-cache`` so a fresh process (``dfir-ar wazuh-ar``) skips the
compile.

File walk: os.scandir with follow_symlinks=False everywhere; symlinks are never followed (not to
files, not into directories), so nothing outside the configured trees is read; by default it also
stays on the file system of each root (like ``find -xdev``). Each file is opened with O_NOFOLLOW
(and O_NOATIME where allowed, so the scan does not rewrite access times an investigator may need)
and read through that descriptor or handed to libyara as ``/proc/self/fd/N``: what is scanned is
exactly the file that was checked, even if the path is swapped for a symlink meanwhile.

Files are scanned by YARA-X when it is installed and compiles the rules (``engine = "auto"``,
the default; ~1.8x libyara's bytes per CPU-second on the bench tree), in one worker process per
scanning thread (its binding holds the GIL; collectors/yarax_engine.py), else by libyara on
``threads`` scanning threads (it releases the GIL). Either way the walk feeds a bounded queue,
small files in batches (collectors/yara_work.py); files up to READ_MAX are read and scanned
from memory, bigger ones mapped by the engine; the collecting thread keeps the walk, the
deadline (workers are killed at it), the byte cap and all writing. Process memory is always
scanned with libyara (YARA-X cannot scan a pid). Output:
``matches.jsonl`` (one line per rule match, with strings, offsets and capped matched data in
hex) and ``problems.jsonl`` (unreadable files, timeouts, vanished pids).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import logging
import os
import queue
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from collectors import yarax_engine
from collectors.memory import parse_pids, pids_talking_to
from collectors.yara_file import (
    BatchDone,
    ScanResult,
    file_result,
    matched_target,
    open_regular,
    read_small,
)
from collectors.yara_work import FileBatch, FileItem, PidWork, Work, WorkQueue, batches
from dfir_ar.collector import (
    ArtifactSink,
    ArtifactWriter,
    ByteCapReached,
    CollectJob,
    Collector,
    CollectorContext,
    OptionSpec,
    Outcome,
    Status,
)
from dfir_ar.errors import ConfigError, InvalidArgument, PluginUnavailable
from dfir_ar.responder import Arg

MiB = 1024 * 1024
RULE_SUFFIXES = (".yar", ".yara")
MEMORY_MODES = ("auto", "all", "none", "srcip", "pids")
ENGINES = ("auto", "yara-x", "libyara")
PIPELINE = 2
"""Batches handed to each YARA-X worker ahead of its replies (one scanning, one waiting)."""
MAX_RESTARTS = 3
"""YARA-X worker processes a proxy starts again after one died, before the scan stops."""
POLL = 0.1
"""Seconds a YARA-X proxy thread waits for a reply or work before it checks the deadline."""
_INCLUDE = re.compile(rb'^\s*include\s+"([^"]+)"', re.MULTILINE)
QUEUE_DEPTH = 256
"""Batches queued ahead of the scanning threads (at most 64 files each)."""

_compiled: dict[str, Any] = {}
"""yara.Rules by source digest, for the life of the process (compiled once)."""
_compiled_lock = threading.Lock()
_fallbacks_logged: set[str] = set()
_log = logging.getLogger("dfir_ar.collector.yara")


def rule_files(entries: Sequence[Path]) -> list[Path]:
    """The rule files named by ``rules``: files as given, directories searched for .yar/.yara."""
    files: list[Path] = []
    for entry in entries:
        if not entry.is_absolute():
            raise ValueError(f"rules: {str(entry)!r} must be an absolute path")
        if entry.is_dir():
            found = sorted(
                p for p in entry.rglob("*") if p.suffix.lower() in RULE_SUFFIXES and p.is_file()
            )
            if not found:
                raise ValueError(f"rules: directory {entry} holds no .yar or .yara file")
            files.extend(found)
        elif entry.is_file():
            files.append(entry)
        else:
            raise ValueError(f"rules: {entry} does not exist (or is not a file or directory)")
    return list(dict.fromkeys(files))


def rules_digest(files: Sequence[Path], yara_version: str) -> str:
    """SHA-256 over the libyara version, every rule file's path and bytes, and what they include."""
    h = hashlib.sha256(f"yara {yara_version}\n".encode())
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        seen.add(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"rules: cannot read {path}: {exc.strerror}") from None
        h.update(os.fsencode(path) + b"\0" + len(data).to_bytes(8, "big") + data)
        for inc in _INCLUDE.findall(data):
            todo.append((path.parent / os.fsdecode(inc)).resolve())
    return h.hexdigest()


def _namespace(path: Path) -> str:
    # One namespace per file: two rule sets may both define "rule suspicious" without clashing.
    return str(path)


def compile_rules(entries: Sequence[Path], cache_dir: Path | None) -> tuple[str, Any]:
    """Compiled rules for ``entries`` (from the process cache, the disk cache, or compiled now).

    Raises ValueError with libyara's message, which names the file and line:
    ``/etc/dfir-ar/rules/x.yar(4): syntax error, unexpected '}'``.
    """
    import yara

    files = rule_files(entries)
    digest = rules_digest(files, yara.__version__)
    with _compiled_lock:
        cached = cache_dir / f"{digest}.yarc" if cache_dir is not None else None
        if digest in _compiled:
            if cached is not None and not cached.exists():
                _save(_compiled[digest], cached)
            return digest, _compiled[digest]
        rules = None
        if cached is not None and cached.is_file():
            try:
                rules = yara.load(str(cached))
            except yara.Error:
                rules = None  # corrupt or from another libyara: recompile and overwrite
        if rules is None:
            try:
                rules = yara.compile(filepaths={_namespace(p): str(p) for p in files})
            except yara.SyntaxError as exc:
                raise ValueError(f"invalid YARA rule: {exc}") from None
            except yara.Error as exc:
                raise ValueError(f"cannot compile YARA rules: {exc}") from None
            if cached is not None:
                _save(rules, cached)
        _compiled[digest] = rules
        return digest, rules


def compile_yarax(entries: Sequence[Path], cache_dir: Path | None) -> tuple[bytes | None, str]:
    """(YARA-X's serialized rules, '') when YARA-X is installed and compiles the rules, else
    (None, why not)."""
    version = yarax_engine.version()
    if version is None:
        return None, "yara-x is not installed (pip install yara-x)"
    files = rule_files(entries)
    if any(_INCLUDE.search(p.read_bytes()) for p in files):
        # libyara resolves an include next to the including file, YARA-X in a search list of
        # directories: the same text could include a different file.
        return None, "the rules use include, which yara-x resolves differently from libyara"
    digest = rules_digest(files, f"x {version}")
    try:
        return yarax_engine.compile_rules(files, digest, cache_dir), ""
    except ValueError as exc:
        return None, str(exc)


def _save(rules: Any, path: Path) -> None:
    """Write the compiled cache atomically; a cache that cannot be written only costs time."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        rules.save(str(tmp))
        os.replace(tmp, path)


class YaraSettings(BaseModel):
    """``[collectors.yara]``; validating it compiles the rules (errors name file and line)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    rules: tuple[Path, ...] = Field(min_length=1)
    """Rule files or directories (searched for *.yar, *.yara), absolute paths."""
    paths: tuple[Path, ...] = ()
    """Directories (or files) scanned when the command gives no --path."""
    exclude: tuple[str, ...] = ()
    """Globs matched against full paths and base names; a matching directory is not entered."""
    max_file_mb: int = Field(default=64, ge=1)
    """Files larger than this are skipped (counted as skipped_large)."""
    per_file_timeout: int = Field(default=60, ge=1)
    """Seconds libyara may spend on one file or one process."""
    threads: int = Field(default=2, ge=1, le=32)
    """Scanning threads (libyara releases the GIL; one per core is the sweet spot)."""
    one_file_system: bool = True
    """Do not descend into other mounts (/proc, network shares) below a scanned directory."""
    cache_dir: Path | None = None
    """Compiled-rules cache; defaults to <state_dir>/yara-cache."""
    max_instances: int = Field(default=16, ge=1)
    """Matched-string instances recorded per string (the total is always recorded)."""
    max_data_bytes: int = Field(default=64, ge=0)
    """Bytes of matched data kept (hex) per instance."""
    engine: Literal["auto", "yara-x", "libyara"] = "auto"
    """What scans files: auto (YARA-X in worker processes when it is installed and compiles the
    rules, else libyara), yara-x, libyara. Process memory is always scanned with libyara."""

    _digest: str = PrivateAttr(default="")
    _yarax_rules: bytes | None = PrivateAttr(default=None)
    _yarax_note: str = PrivateAttr(default="")

    @field_validator("rules")
    @classmethod
    def _compile(cls, rules: tuple[Path, ...], info: ValidationInfo) -> tuple[Path, ...]:
        # A field validator (not a model one) so `dfir-ar config check` names the key:
        # "[collectors.yara], rules: invalid YARA rule: /x/bad.yar(6): undefined string".
        try:
            import yara  # noqa: F401
        except ImportError:
            raise ValueError("yara-python is not installed (pip install yara-python)") from None
        ctx = info.context if isinstance(info.context, Mapping) else {}
        cache = ctx.get("cache_dir")
        compile_rules(rules, Path(cache) if cache else None)
        return rules

    @field_validator("engine")
    @classmethod
    def _compile_yarax(cls, engine: str, info: ValidationInfo) -> str:
        # Asked for by name: YARA-X must be there and take every rule (the error names the key,
        # the file and the line). "auto" never fails here; _remember notes why it falls back.
        if engine == "yara-x" and "rules" in info.data:
            ctx = info.context if isinstance(info.context, Mapping) else {}
            cache = ctx.get("cache_dir")
            _, note = compile_yarax(info.data["rules"], Path(cache) if cache else None)
            if note:
                raise ValueError(note)
        return engine

    @model_validator(mode="after")
    def _remember(self, info: ValidationInfo) -> YaraSettings:
        ctx = info.context if isinstance(info.context, Mapping) else {}
        cache = self.cache_dir or ctx.get("cache_dir")
        cache_dir = Path(cache) if cache else None
        # Already compiled by _compile: this only finds the digest (and fills an explicit
        # cache_dir's disk cache).
        self._digest, _ = compile_rules(self.rules, cache_dir)
        if self.engine != "libyara":
            self._yarax_rules, self._yarax_note = compile_yarax(self.rules, cache_dir)
            if self._yarax_note and self._yarax_note not in _fallbacks_logged:
                _fallbacks_logged.add(self._yarax_note)
                # Not installed is a choice; installed but refusing these rules is news.
                level = logging.INFO if "not installed" in self._yarax_note else logging.WARNING
                _log.log(level, "yara: files are scanned with libyara: %s", self._yarax_note)
        return self

    @property
    def digest(self) -> str:
        return self._digest

    def compiled(self) -> Any:
        return _compiled[self._digest]

    def yarax_rules(self) -> bytes | None:
        """YARA-X's serialized rules, or None when they are not usable (see yarax_note)."""
        return self._yarax_rules

    @property
    def yarax_note(self) -> str:
        """Why YARA-X is not used for these rules ('' when it is, or when not asked)."""
        return self._yarax_note


@dataclass
class Counters:
    files_scanned: int = 0
    bytes_scanned: int = 0
    files_matched: int = 0
    matches: int = 0
    skipped_large: int = 0
    excluded: int = 0
    symlinks_skipped: int = 0
    special_skipped: int = 0
    other_fs_skipped: int = 0
    unreadable: int = 0
    timeouts: int = 0
    pids_scanned: int = 0
    pids_matched: int = 0
    pids_vanished: int = 0
    pids_unreadable: int = 0
    problems_dropped: int = 0


@dataclass
class Walker:
    """Yield regular files under ``roots``; pure policy, counting what it skips and why."""

    roots: Sequence[str]
    exclude: Sequence[str]
    max_size: int
    one_file_system: bool
    counters: Counters
    problems: list[dict[str, Any]] = field(default_factory=list)

    def excluded(self, path: str, name: str) -> bool:
        if not self.exclude:
            return False
        return any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(name, g) for g in self.exclude)

    def walk(self) -> Iterator[FileItem]:
        for root in self.roots:
            try:
                st = os.stat(root, follow_symlinks=False)
            except OSError as exc:
                self._problem(root, exc)
                continue
            if self.excluded(root, os.path.basename(root)):
                self.counters.excluded += 1
                continue
            if stat.S_ISLNK(st.st_mode):
                self.counters.symlinks_skipped += 1
                self.problems.append({"path": root, "error": "configured path is a symlink; "
                                      "not followed (give the real path)"})
                continue
            if stat.S_ISREG(st.st_mode):
                if st.st_size > self.max_size:
                    self.counters.skipped_large += 1
                else:
                    yield FileItem(root, st.st_size)
                continue
            if stat.S_ISDIR(st.st_mode):
                yield from self._tree(root, st.st_dev)

    def _tree(self, root: str, dev: int) -> Iterator[FileItem]:
        stack = [root]
        while stack:
            top = stack.pop()
            try:
                with os.scandir(top) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self._problem(top, exc)
                continue
            subdirs = []
            for entry in entries:
                path = entry.path
                if self.excluded(path, entry.name):
                    self.counters.excluded += 1
                    continue
                try:
                    if entry.is_symlink():
                        self.counters.symlinks_skipped += 1
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if self.one_file_system and entry.stat(follow_symlinks=False).st_dev != dev:
                            self.counters.other_fs_skipped += 1
                            continue
                        subdirs.append(path)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        self.counters.special_skipped += 1  # fifo, socket, device: never read
                        continue
                    size = entry.stat(follow_symlinks=False).st_size
                except OSError as exc:
                    self._problem(path, exc)
                    continue
                if size > self.max_size:
                    self.counters.skipped_large += 1
                    continue
                yield FileItem(path, size)
            stack.extend(reversed(subdirs))

    def _problem(self, path: str, exc: OSError) -> None:
        self.counters.unreadable += 1
        self.problems.append({"path": path, "error": exc.strerror or str(exc)})


def match_records(matches: Sequence[Any], max_instances: int, max_data: int) -> list[dict[str, Any]]:
    """yara Match objects as JSON-able dicts (capped instances and matched data).

    Strings without instances are left out: libyara lists a matched private string with its
    instances hidden, YARA-X does not list it at all; both engines then write the same lines.
    """
    out = []
    for m in matches:
        strings = []
        for s in m.strings:
            instances = s.instances
            if not instances:
                continue
            strings.append(
                {
                    "identifier": s.identifier,
                    "instances_total": len(instances),
                    "instances": [
                        {
                            "offset": i.offset,
                            "length": i.matched_length,
                            "data_hex": bytes(i.matched_data[:max_data]).hex(),
                            **({"xor_key": i.xor_key} if i.xor_key else {}),
                        }
                        for i in instances[:max_instances]
                    ],
                }
            )
        out.append(
            {
                "rule": m.rule,
                "namespace": m.namespace,
                "tags": list(m.tags),
                "meta": dict(m.meta),
                "strings": strings,
            }
        )
    return out


class YaraScan(Collector):
    """Scan files and process memory with YARA rules compiled once (errors at config check).

    Files: --path (repeatable) or [collectors.yara] paths; never follows symlinks, skips
    excludes, files over the size cap, other mounts; per-file timeout. Memory (--memory):
    auto (the --pid list, else processes talking to srcip), all, none, srcip, pids. Writes
    matches.jsonl (rule, tags, meta, strings with offsets and matched bytes) and problems.jsonl.
    """

    name: ClassVar[str] = "yara"
    expects: ClassVar[tuple[Arg, ...]] = ()
    version: ClassVar[str] = "1"
    default_duration: ClassVar[float] = 600.0
    Settings: ClassVar[type[BaseModel]] = YaraSettings
    option_specs: ClassVar[tuple[OptionSpec, ...]] = (
        OptionSpec("path", list, [], "File or directory to scan (repeatable; replaces `paths`)."),
        OptionSpec("pid", list, [], "Process id whose memory to scan (repeatable)."),
        OptionSpec(
            "memory", str, "auto",
            "Which process memory to scan: auto (the --pid list, else processes talking to "
            "srcip), all, none, srcip, pids.",
        ),
        OptionSpec("max-file-mb", int, 0, "Skip files larger than this (0: the configured max_file_mb)."),
        OptionSpec("duration", float, 600.0, "Seconds the whole scan may take."),
        OptionSpec(
            "engine", str, "",
            "What scans files: auto, yara-x, libyara (default: the configured engine).",
        ),
    )

    def __init__(self, context: CollectorContext) -> None:
        # Not super().__init__: the settings are validated with the disk cache location, so a
        # fresh process loads compiled rules instead of compiling them again.
        self.context = context
        try:
            self.settings = YaraSettings.model_validate(
                dict(context.settings), context={"cache_dir": context.state_dir / "yara-cache"}
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in e['loc']) or 'rules'}: "
                f"{e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise ConfigError(
                f"[collectors.yara]: {problems} (set rules = [\"/path/to/rules\"] in the config)"
            ) from None

    @classmethod
    def check_compatible(cls) -> None:
        try:
            import yara  # noqa: F401
        except ImportError as exc:
            raise PluginUnavailable(
                f"yara: yara-python is not importable ({exc})", hint="pip install 'dfir-ar[yara]'"
            ) from None

    @property
    def _settings(self) -> YaraSettings:
        assert isinstance(self.settings, YaraSettings)
        return self.settings

    def select_pids(self, mode: str, pids: list[int], job: CollectJob) -> list[int]:
        srcip = job.target.srcip
        if mode == "auto":
            mode = "pids" if pids else ("srcip" if srcip is not None else "none")
        if mode == "none":
            return []
        if mode == "pids":
            if not pids:
                raise InvalidArgument("yara: --memory pids needs at least one --pid")
            return pids
        if mode == "srcip":
            if srcip is None:
                raise InvalidArgument("yara: --memory srcip needs an order with an srcip")
            return sorted({*pids, *pids_talking_to(srcip)})
        own = os.getpid()
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != own and _has_user_memory(int(name)):
                found.append(int(name))
        return sorted(found)

    def collect(self, job: CollectJob, sink: ArtifactSink) -> Outcome:
        s = self._settings
        opts = job.options
        mode = str(opts.get("memory", "auto"))
        if mode not in MEMORY_MODES:
            raise InvalidArgument(
                f"yara: --memory {mode!r} is not one of {', '.join(MEMORY_MODES)}"
            )
        pids = parse_pids(opts.get("pid", []), self.name)
        max_mb = int(opts.get("max-file-mb", 0)) or s.max_file_mb
        if max_mb < 0:
            raise InvalidArgument("yara: --max-file-mb must be positive")
        duration = float(opts.get("duration", self.default_duration))
        if duration <= 0:
            raise InvalidArgument("yara: --duration must be positive")
        roots = [str(p) for p in (opts.get("path") or s.paths)]
        for r in roots:
            if not os.path.isabs(r):
                raise InvalidArgument(f"yara: --path {r!r} must be an absolute path")
        scan_pids = self.select_pids(mode, pids, job)
        peers_wanted = mode == "srcip" or (mode == "auto" and not pids and job.target.srcip)
        if not roots and not scan_pids and peers_wanted:
            return Outcome(
                Status.OK,
                details={"note": f"no process had a connection to {job.target.srcip}; "
                                 "no paths configured; nothing to scan"},
            )
        if not roots and not scan_pids and mode in ("none", "auto"):
            return Outcome(
                Status.FAILED,
                "nothing to scan: no --path, no [collectors.yara] paths, and no process selected "
                "(--pid, --memory all|srcip)",
            )
        # Checked even when only processes are scanned: a bad --engine is an error either way.
        yarax, note = self.file_engine(str(opts.get("engine") or s.engine))
        if not roots:
            yarax, note = None, ""
        deadline = min(job.deadline, job.clock.monotonic() + duration)
        run = _Run(self, job, sink, deadline, s, max_mb, yarax, note)
        return run.execute(roots, scan_pids, requested=set(pids))

    def file_engine(self, engine: str) -> tuple[bytes | None, str]:
        """(YARA-X's serialized rules when it scans the files, else None; why YARA-X is not
        used when it was wanted but could not be, else '')."""
        s = self._settings
        if engine not in ENGINES:
            raise InvalidArgument(f"yara: --engine {engine!r} is not one of {', '.join(ENGINES)}")
        if engine == "libyara":
            return None, ""
        if s.engine == "libyara":
            # Configured libyara: YARA-X was not tried at load; try it now (cached).
            cache = s.cache_dir or self.context.state_dir / "yara-cache"
            blob, note = compile_yarax(s.rules, cache)
        else:
            blob, note = s.yarax_rules(), s.yarax_note
        if blob is None and engine == "yara-x":
            raise InvalidArgument(f"yara: --engine yara-x: {note}")
        return blob, "" if blob is not None else note


def _has_user_memory(pid: int) -> bool:
    """False for kernel threads (empty maps) and processes that are gone."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            return bool(f.read(1))
    except OSError:
        return False


class _Run:
    """One collection: the walk feeds a bounded queue that scanning threads drain; only the
    collecting thread writes artifacts.

    Per-file cost matters as much as MB/s (trees of scripts are many small files): a clean file
    costs the scanning thread an open, a read (files up to READ_MAX; libyara maps bigger ones
    itself) and the scan, and the collecting thread nothing but its walk step; only matches and
    problems travel back as objects.
    """

    def __init__(
        self, owner: YaraScan, job: CollectJob, sink: ArtifactSink, deadline: float,
        settings: YaraSettings, max_mb: int, yarax: bytes | None = None, engine_note: str = "",
    ) -> None:
        import yara

        self.owner = owner
        self.job = job
        self.sink = sink
        self.deadline = deadline
        self.s = settings
        self.rules = settings.compiled()
        self.yarax = yarax
        """YARA-X's serialized rules when worker processes scan the files (None: libyara)."""
        self.engine_note = engine_note
        """Why the files are scanned by libyara although YARA-X was wanted ('' otherwise)."""
        self._yara_timeout: type[Exception] = yara.TimeoutError
        self._yara_error: type[Exception] = yara.Error
        self.max_size = max_mb * MiB
        self.counters = Counters()
        self.stop_reason = ""
        self.worker_failures: list[str] = []
        """Why each YARA-X worker that died ended (its files are listed as not scanned)."""
        self.requested_missing: list[int] = []
        self._requested: set[int] = set()
        self._last_progress = 0.0
        self._problem_lines = 0
        self._capped = False
        self._crash: BaseException | None = None
        self._queue = WorkQueue(QUEUE_DEPTH)
        self._results: queue.SimpleQueue[BatchDone | BaseException] = queue.SimpleQueue()
        self._outstanding = 0
        self._pids_total = 0
        self._pids_done = 0
        self._files_wanted = False
        self._matches: ArtifactWriter | None = None
        self._problems: ArtifactWriter | None = None

    def should_stop(self) -> str:
        if self.stop_reason:
            return self.stop_reason
        if self.job.cancel.is_set():
            self.stop_reason = "cancelled"
        elif self.job.clock.monotonic() >= self.deadline:
            self.stop_reason = "deadline reached"
        return self.stop_reason

    def _timeout(self) -> int:
        left = self.deadline - self.job.clock.monotonic()
        return max(1, min(self.s.per_file_timeout, int(left) + 1))

    # -- work done on the scanning threads ---------------------------------------------------

    def _worker(self) -> None:
        while (work := self._queue.get()) is not None:
            self._results.put(self._answer(work))

    def _answer(self, work: Work) -> BatchDone | BaseException:
        """``work`` scanned here, or what went wrong (raised by the collecting thread)."""
        try:
            return self._scan(work)
        except BaseException as exc:  # noqa: BLE001 - handed to the collecting thread, raised there
            return exc

    def _proxy(self, rules_fd: int) -> None:
        """A YARA-X worker process's feeder: sends it batches from the queue (PIPELINE ahead),
        hands its replies to the collecting thread, scans process memory itself (libyara).
        A worker that dies is replaced (at most MAX_RESTARTS times): one crafted file that
        crashes the scanner must not end the scan of everything after it. Every work item
        taken is answered exactly once on _results, whatever happens."""
        inflight: deque[FileBatch] = deque()
        worker: yarax_engine.WorkerProcess | None = None
        ended = False
        restarts = 0
        try:
            while (not ended or inflight) and not self.should_stop():
                if worker is None:
                    worker = yarax_engine.WorkerProcess(rules_fd, self._worker_settings())
                try:
                    ended = self._feed(worker, inflight, ended)
                except yarax_engine.WorkerDied as exc:
                    # The files it held are listed as not scanned (the one that killed it is
                    # among them), and the outcome names the worker.
                    self.worker_failures.append(str(exc))
                    while inflight:
                        self._results.put(yarax_engine.lost_batch(inflight.popleft(), str(exc)))
                    worker.close(kill=True)
                    worker = None
                    restarts += 1
                    if restarts > MAX_RESTARTS:
                        self.stop_reason = self.stop_reason or (
                            f"scan process failed {restarts} times (last: {exc})"
                        )
        except BaseException as exc:  # noqa: BLE001 - raised from collect() once threads end
            self._crash = self._crash or exc
            self.stop_reason = self.stop_reason or f"internal error: {exc!r}"
        finally:
            if worker is not None:
                # Stopped (deadline, cap, cancel, failure): killed, its batches dropped.
                worker.close(kill=bool(inflight) or not ended)
            for _ in inflight:
                self._results.put(BatchDone(0, 0, []))
            if not ended:
                # Stopping: the collecting thread closes the queue (discarding what it holds).
                while (work := self._queue.get()) is not None:
                    self._results.put(BatchDone(0, 0, [], pids=int(isinstance(work, PidWork))))

    def _feed(
        self, worker: yarax_engine.WorkerProcess, inflight: deque[FileBatch], ended: bool
    ) -> bool:
        """One round of a proxy: take work until PIPELINE batches are with the worker, then
        wait up to POLL for a reply. Returns whether the queue's end has been taken."""
        while not ended and len(inflight) < PIPELINE:
            try:
                work = self._queue.get(timeout=0.0 if inflight else POLL)
            except queue.Empty:
                break
            if work is None:
                ended = True
            elif isinstance(work, PidWork):
                self._results.put(self._answer(work))
            else:
                inflight.append(work)
                worker.send(work, self._timeout())
        if inflight and (done := worker.poll(POLL)) is not None:
            inflight.popleft()
            self._results.put(done)
        return ended

    def _worker_settings(self) -> dict[str, Any]:
        return {
            "sys_path": yarax_engine.worker_sys_path(),
            "max_size": self.max_size,
            "max_instances": self.s.max_instances,
            "max_data_bytes": self.s.max_data_bytes,
        }

    def _scan(self, work: Work) -> BatchDone:
        if isinstance(work, PidWork):
            if self.should_stop():
                return BatchDone(0, 0, [], pids=1)
            return BatchDone(0, 0, [self.scan_pid(work.pid)], pids=1)
        clean = clean_bytes = 0
        results: list[ScanResult] = []
        for item in work.files:
            if self.should_stop():
                break
            r = self.scan_file(item)
            if isinstance(r, int):
                clean += 1
                clean_bytes += r
            else:
                results.append(r)
        return BatchDone(clean, clean_bytes, results)

    def scan_file(self, item: FileItem) -> ScanResult | int:
        """Scan one file: the bytes scanned if nothing matched (the common case, so nothing is
        built for it), else a ScanResult with the matches or what went wrong."""
        opened = open_regular(item.path, self.max_size)
        if isinstance(opened, ScanResult):
            return opened
        fd, st = opened
        try:
            size = st.st_size
            data: bytes | None = None
            try:
                # Small files are read: ~20 us less per file than libyara's open + mmap + munmap.
                data = read_small(fd, size)
                if data is not None:
                    size = len(data)
                    found = self.rules.match(data=data, timeout=self._timeout())
                else:
                    found = self.rules.match(f"/proc/self/fd/{fd}", timeout=self._timeout())
            except self._yara_timeout:
                return file_result(item.path, "per-file timeout", "timeout", size)
            except (self._yara_error, OSError) as exc:
                return file_result(item.path, str(exc), "unreadable")
            if not found:
                return size
            records = match_records(found, self.s.max_instances, self.s.max_data_bytes)
            return ScanResult(matched_target(item.path, st, data, fd), records, size)
        finally:
            os.close(fd)

    def scan_pid(self, pid: int) -> ScanResult:
        target: dict[str, Any] = {"type": "process", "pid": pid}
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                target["comm"] = f.read().rstrip(b"\n").decode("utf-8", "replace")
            target["exe"] = os.readlink(f"/proc/{pid}/exe")
        except FileNotFoundError:
            return ScanResult(target, [], error="process vanished", kind="vanished")
        except OSError:
            pass  # exe unreadable (kernel thread, other namespace): scan anyway
        try:
            found = self.rules.match(pid=pid, timeout=self._timeout())
        except self._yara_timeout:
            return ScanResult(target, [], error="per-process timeout", kind="timeout")
        except self._yara_error as exc:
            if not os.path.exists(f"/proc/{pid}"):
                return ScanResult(target, [], error="process vanished", kind="vanished")
            return ScanResult(target, [], error=str(exc), kind="unreadable")
        records = match_records(found, self.s.max_instances, self.s.max_data_bytes)
        return ScanResult(target, records)

    # -- the collecting thread -----------------------------------------------------------------

    def execute(self, roots: Sequence[str], pids: Sequence[int], requested: set[int]) -> Outcome:
        walker = Walker(roots, self.s.exclude, self.max_size, self.s.one_file_system, self.counters)
        started = time.monotonic()
        self._requested = requested
        self._pids_total = len(pids)
        self._files_wanted = bool(roots)
        with (
            self.sink.artifact("matches.jsonl", "application/x-ndjson") as matches,
            self.sink.artifact("problems.jsonl", "application/x-ndjson") as problems,
        ):
            self._matches, self._problems = matches, problems
            # Made once the artifacts are open: nothing between here and its close can raise.
            rules_fd = yarax_engine.rules_memfd(self.yarax) if self.yarax is not None else -1
            target = self._worker if rules_fd < 0 else functools.partial(self._proxy, rules_fd)
            threads = [
                threading.Thread(target=target, name=f"yara-{i}", daemon=True)
                for i in range(self.s.threads)
            ]
            for t in threads:
                t.start()
            fed = False
            try:
                # Memory first: a process can exit while files are scanned; files stay.
                for pid in pids:
                    if not self._submit(PidWork(pid)):
                        break
                else:
                    for batch in batches(walker.walk()):
                        if walker.problems:
                            self._flush_walker(walker)
                        if not self._submit(batch):
                            break
                self._flush_walker(walker)
                fed = True
            finally:
                # Stopped early (or an error here): what is still queued is dropped, not scanned.
                stop = not fed or bool(self.should_stop())
                self._outstanding -= len(self._queue.close(discard=stop))
                while self._outstanding > 0:
                    self._drain(wait=1.0)
                for t in threads:
                    t.join()
                if rules_fd >= 0:
                    os.close(rules_fd)
                self._progress(force=True)
        if self._crash is not None:
            raise self._crash
        c = self.counters
        details: dict[str, Any] = {
            **c.__dict__,
            "rules_sha256": self.s.digest,
            "engine": "yara-x" if self.yarax is not None else "libyara",
            **({"engine_note": self.engine_note} if self.engine_note else {}),
            "roots": list(roots),
            "pids": list(pids),
            "seconds": round(time.monotonic() - started, 3),
            "mb_per_s": round(c.bytes_scanned / MiB / max(time.monotonic() - started, 1e-6), 1),
        }
        reasons = []
        if self.stop_reason:
            reasons.append(f"scan stopped early: {self.stop_reason}")
        if self.worker_failures:
            reasons.append(f"scan process failed, files it held not scanned: "
                           f"{'; '.join(self.worker_failures)}")
        if self.requested_missing:
            reasons.append(f"requested pids not scanned (vanished): {self.requested_missing}")
        if reasons:
            return Outcome(Status.PARTIAL, "; ".join(reasons), details)
        return Outcome(Status.OK, details=details)

    def _submit(self, work: Work) -> bool:
        """Queue ``work`` (waiting while the queue is full); False once the scan should stop."""
        while not self.should_stop():
            if self._queue.put(work, timeout=0.5):
                self._outstanding += 1
                self._drain()
                return True
            self._drain()
        return False

    def _drain(self, wait: float = 0.0) -> None:
        """Record what the threads finished; with ``wait``, wait up to that long for the first."""
        try:
            done = self._results.get(timeout=wait) if wait else self._results.get_nowait()
        except queue.Empty:
            self._progress()
            return
        while True:
            self._outstanding -= 1
            self._take(done)
            try:
                done = self._results.get_nowait()
            except queue.Empty:
                break
        self._progress()

    def _take(self, done: BatchDone | BaseException) -> None:
        if isinstance(done, BaseException):
            # A bug in a scanning thread: stop, and raise it from collect() once threads end.
            self._crash = self._crash or done
            self.stop_reason = self.stop_reason or f"internal error: {done!r}"
            return
        c = self.counters
        c.files_scanned += done.clean_files
        c.bytes_scanned += done.clean_bytes
        self._pids_done += done.pids
        for r in done.results:
            self._record(r)

    def _record(self, r: ScanResult) -> None:
        c = self.counters
        is_pid = r.target["type"] == "process"
        if r.kind == "skipped":
            if r.error:
                c.skipped_large += 1
            return
        if r.kind == "vanished":
            c.pids_vanished += 1
            if r.target["pid"] in self._requested:
                self.requested_missing.append(r.target["pid"])
            self._problem({**r.target, "error": r.error})
            return
        if r.kind in ("unreadable", "timeout"):
            if r.kind == "timeout":
                c.timeouts += 1
            elif is_pid:
                c.pids_unreadable += 1
            else:
                c.unreadable += 1
            self._problem({**r.target, "error": r.error})
            return
        if is_pid:
            c.pids_scanned += 1
        else:
            c.files_scanned += 1
            c.bytes_scanned += r.scanned_bytes
        if r.matches:
            if is_pid:
                c.pids_matched += 1
            else:
                c.files_matched += 1
            assert self._matches is not None
            for m in r.matches:
                c.matches += 1
                line = json.dumps({"target": r.target, **m}, sort_keys=True, default=str)
                self._write(self._matches, line.encode() + b"\n")

    def _write(self, artifact: ArtifactWriter | None, data: bytes) -> None:
        """Write a line; at the byte cap, stop the scan (queued work is dropped) and write no more."""
        if self._capped:
            return
        assert artifact is not None
        try:
            artifact.write(data)
        except ByteCapReached as exc:
            self._capped = True
            self.stop_reason = self.stop_reason or f"byte cap reached ({exc})"

    def _problem(self, record: dict[str, Any]) -> None:
        # Problems are capped so a tree of unreadable files cannot fill the bundle.
        if self._problem_lines >= 10_000:
            self.counters.problems_dropped += 1
            return
        self._problem_lines += 1
        self.owner.context.log.debug("yara: %s", record)
        self._write(self._problems, json.dumps(record, sort_keys=True, default=str).encode() + b"\n")

    def _flush_walker(self, walker: Walker) -> None:
        for p in walker.problems:
            self._problem(p)
        walker.problems.clear()

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < 1.0:
            return
        self._last_progress = now
        c = self.counters
        fraction = None
        if self._pids_total and not self._files_wanted:
            fraction = self._pids_done / self._pids_total
        self.job.progress(
            f"yara: {c.files_scanned} files, {c.bytes_scanned // MiB} MiB, "
            f"{c.pids_scanned} processes, {c.matches} matches",
            fraction,
        )
