"""Memory collector: process dumps as ELF core files, and a physical image in LiME format.

Decision: each image is zstd-compressed *here* (level -1, independent frames compressed on every
core and stored in order: memory_frames.py), as it is read, into
``artifacts/memory/<pid>.core.zst`` / ``physical.lime.zst`` (media type application/zstd),
rather than left to the bundle's own compression. Reason: the bundle stages artifacts on disk
before it seals, so a raw 8 GB dump would need 8 GB of spool; the byte cap then also counts what
is really kept. The manifest's SHA-256 is over the .zst bytes, hashed while written. ``zstd -d``
gives the core for ``gdb -c`` / ``readelf``, and the LiME file for Volatility 3.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from collectors import memory_frames
from dfir_ar import elfcore, lime
from dfir_ar.collector import (
    ArtifactSink,
    ByteCapReached,
    CollectJob,
    Collector,
    OptionSpec,
    Outcome,
    Status,
)
from dfir_ar.errors import InvalidArgument, PluginUnavailable
from dfir_ar.responder import Arg
from dfir_ar.validate import IPAddress

MiB = 1024 * 1024
ZSTD_MEDIA = "application/zstd"
_PID = re.compile(r"[0-9]{1,7}")


def parse_pids(values: Sequence[str], owner: str) -> list[int]:
    """``--pid`` values: positive decimal integers only."""
    pids = []
    for raw in values:
        # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
        if not _PID.fullmatch(raw) or not 0 < int(raw) < 1 << 22:
            raise InvalidArgument(f"{owner}: --pid {raw!r} is not a process id")
        pids.append(int(raw))
    return list(dict.fromkeys(pids))


def _canonical(ip: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def pids_talking_to(srcip: IPAddress) -> list[int]:
    """Pids with a socket whose remote end is ``srcip`` (v4-mapped IPv6 peers included).

    One system-wide ``psutil.net_connections`` (24 ms here) instead of a per-process walk.
    """
    import psutil

    pids = set()
    for conn in psutil.net_connections(kind="inet"):
        raddr = conn.raddr
        if conn.pid and raddr and _canonical(raddr.ip) == srcip:
            pids.add(conn.pid)
    pids.discard(os.getpid())
    return sorted(pids)


def _disk_precheck(sink: ArtifactSink, raw_size: int) -> str:
    """A warning when the uncompressed dump would not fit the spool's free disk.

    Only a warning: the dump is compressed (often 3x or more) and the sink stops it cleanly at
    its free-disk floor anyway; this tells the analyst why a dump may end early.
    """
    where = getattr(sink, "staging_dir", None)
    if not isinstance(where, Path):
        return ""
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return ""
    if raw_size <= free:
        return ""
    return (f"uncompressed dump ({raw_size // MiB} MiB) exceeds free spool disk "
            f"({free // MiB} MiB); it fits only if it compresses well")


def _state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat ('' when the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return ""
    return stat[stat.rfind(b")") + 2 :][:1].decode("ascii", "replace")


@contextlib.contextmanager
def frozen(pid: int, enabled: bool, settle: float = 1.0) -> Iterator[bool]:
    """SIGSTOP ``pid`` for the dump and SIGCONT it after, so the image is one instant.

    Through a pidfd, so a pid reused meanwhile is never signalled. A process that was already
    stopped is left stopped. Yields whether this call froze it.
    """
    if not enabled:
        yield False
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError:
        yield False  # no pidfd support: dump without freezing rather than risk a wrong pid
        return
    try:
        if _state(pid) in ("T", "t", ""):
            yield False
            return
        signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
        end = time.monotonic() + settle
        while _state(pid) not in ("T", "t", "") and time.monotonic() < end:
            time.sleep(0.001)  # SIGSTOP is asynchronous: wait until the process is stopped
        try:
            yield True
        finally:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
    finally:
        os.close(pidfd)


class MemorySettings(BaseModel):
    """``[collectors.memory]``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    physical_sources: tuple[Path, ...] = lime.DEFAULT_SOURCES
    """Tried in order for --physical: ELF cores (/proc/kcore) or raw devices (/dev/mem)."""
    iomem: Path = lime.DEFAULT_IOMEM
    """Where the System RAM ranges are listed."""
    zstd_level: int = Field(default=-1, ge=-7, le=19)
    # Measured on a real process here: -1 costs 2.5 CPU-s/GiB for a 0.36 ratio, level 1 3.1 for
    # 0.32, level 3 5.1 for 0.29. Capture speed first: the process changes while it is read.
    """zstd level of the stored images (-1: fast; raise it to trade CPU for smaller dumps)."""
    compress_workers: int = Field(default=2, ge=1, le=64)
    """Threads reading and compressing a dump in parallel (1: all on the collecting thread)."""


class Memory(Collector):
    """Dump process memory as ELF core files (readelf/gdb open them) and physical RAM as LiME.

    Processes: every --pid, plus (by default) each process with a connection to the alert's
    srcip. Each dump is <pid>.core.zst with <pid>.json beside it (maps, what was left out and
    why, unreadable ranges). --max-mb caps each core: heap and anonymous memory are kept first,
    read-only file mappings dropped first, and the core stays well-formed. --physical reads
    /proc/kcore (System RAM from /proc/iomem) like AVML; hosts without any physical source get
    an error naming each source tried. --freeze holds each process stopped while it is read
    (if dfir-ar is killed -9 meanwhile, `kill -CONT PID` resumes it). Needs root (or
    CAP_SYS_PTRACE).
    """

    name: ClassVar[str] = "memory"
    expects: ClassVar[tuple[Arg, ...]] = ()
    version: ClassVar[str] = "1"
    default_duration: ClassVar[float] = 600.0
    Settings: ClassVar[type[BaseModel]] = MemorySettings
    option_specs: ClassVar[tuple[OptionSpec, ...]] = (
        OptionSpec("pid", list, [], "Process id to dump (repeatable)."),
        OptionSpec(
            "srcip-procs", bool, True,
            "Also dump every process with a connection to the alert's srcip (default on; "
            "--srcip-procs=no turns it off).",
        ),
        OptionSpec(
            "max-mb", int, 0,
            "Cap on each uncompressed core in MiB (0: only the bundle's byte cap). Anonymous "
            "memory is kept first; the dump is marked partial when the cap leaves maps out.",
        ),
        OptionSpec(
            "physical", bool, False,
            "Also take a physical memory image (LiME) from /proc/kcore, /dev/crash or /dev/mem.",
        ),
        OptionSpec(
            "freeze", bool, False,
            "Stop each process (SIGSTOP) while it is dumped, so the image is one instant; it is "
            "resumed after (the process may notice the pause).",
        ),
        OptionSpec("duration", float, 600.0, "Seconds the whole collection may take."),
    )

    @classmethod
    def check_compatible(cls) -> None:
        try:
            import zstandard  # noqa: F401
        except ImportError as exc:
            raise PluginUnavailable(
                f"memory: zstandard is not importable ({exc})", hint="pip install zstandard"
            ) from None

    @property
    def _settings(self) -> MemorySettings:
        assert isinstance(self.settings, MemorySettings)
        return self.settings

    def collect(self, job: CollectJob, sink: ArtifactSink) -> Outcome:
        opts = job.options
        owner = self.name
        pids = parse_pids(opts.get("pid", []), owner)
        max_mb = int(opts.get("max-mb", 0))
        if max_mb < 0:
            raise InvalidArgument(f"{owner}: --max-mb must be 0 (no cap) or a positive number")
        duration = float(opts.get("duration", self.default_duration))
        if duration <= 0:
            raise InvalidArgument(f"{owner}: --duration must be positive")
        deadline = min(job.deadline, job.clock.monotonic() + duration)

        def should_stop() -> str:
            if job.cancel.is_set():
                return "cancelled"
            if job.clock.monotonic() >= deadline:
                return "deadline reached"
            return ""

        requested = set(pids)
        srcip = job.target.srcip
        from_srcip: list[int] = []
        if srcip is not None and opts.get("srcip-procs", True):
            from_srcip = [p for p in pids_talking_to(srcip) if p not in requested]
        targets = [*pids, *from_srcip]
        physical = bool(opts.get("physical", False))
        if not targets and not physical:
            if srcip is not None and opts.get("srcip-procs", True):
                return Outcome(
                    Status.OK,
                    details={"srcip": str(srcip), "pids": [], "note":
                             f"no process had a connection to {srcip}; nothing to dump"},
                )
            return Outcome(
                Status.FAILED,
                "nothing to collect: give --pid, --physical, or an srcip whose processes to dump",
            )

        problems: list[str] = []
        dumps: list[dict[str, Any]] = []
        vanished: list[int] = []
        stop = ""
        for n, pid in enumerate(targets):
            stop = should_stop()
            if stop:
                problems.append(f"pids not dumped ({stop}): {targets[n:]}")
                break
            try:
                result = self._dump_pid(pid, max_mb, job, sink, should_stop, n, len(targets))
            except ProcessLookupError:
                vanished.append(pid)
                self.context.log.info("memory: pid %d vanished before its dump", pid)
                if pid in requested:
                    problems.append(f"pid {pid} vanished before it could be dumped")
                continue
            except PermissionError as exc:
                problems.append(f"pid {pid}: permission denied ({exc.strerror}); run as root")
                continue
            dumps.append(result)
            if result["stopped"]:
                stop = result["stopped"]
                problems.append(f"pid {pid}: dump cut short ({stop})")
                if stop in ("byte cap reached", "cancelled", "deadline reached"):
                    if n + 1 < len(targets):
                        problems.append(f"pids not dumped ({stop}): {targets[n + 1:]}")
                    break
            elif result["omitted_by_cap"]:
                problems.append(
                    f"pid {pid}: {result['omitted_by_cap']} maps left out by the size cap"
                )

        phys: dict[str, Any] | None = None
        phys_failed = ""
        if physical and not stop:
            try:
                phys = self._physical(job, sink, should_stop)
            except lime.PhysicalSourceError as exc:
                phys_failed = str(exc)
                problems.append(f"physical image: {exc}")
            else:
                if not phys["complete"]:
                    problems.append(f"physical image cut short ({phys['stopped']})")
                elif phys["missing"]:
                    problems.append("physical image: some System RAM is not mapped by the source")

        details: dict[str, Any] = {
            "requested_pids": pids,
            "srcip": str(srcip) if srcip is not None else None,
            "srcip_pids": from_srcip,
            "dumps": [{k: v for k, v in d.items() if k != "omitted_by_cap"} for d in dumps],
            "vanished_pids": vanished,
        }
        if phys is not None:
            details["physical"] = {k: phys[k] for k in ("source", "complete", "stopped")}
        if phys_failed and not dumps:
            return Outcome(Status.FAILED, phys_failed, details)
        if not dumps and phys is None and targets:
            return Outcome(Status.FAILED, "; ".join(problems) or "no process could be dumped",
                           details)
        if problems:
            return Outcome(Status.PARTIAL, "; ".join(problems), details)
        return Outcome(Status.OK, details=details)

    def _dump_pid(
        self,
        pid: int,
        max_mb: int,
        job: CollectJob,
        sink: ArtifactSink,
        should_stop: Callable[[], str],
        index: int,
        count: int,
    ) -> dict[str, Any]:
        with frozen(pid, bool(job.options.get("freeze", False))) as was_frozen:
            result = self._dump_one(pid, max_mb, job, sink, should_stop, index, count,
                                    was_frozen)
        return result

    def _dump_one(
        self,
        pid: int,
        max_mb: int,
        job: CollectJob,
        sink: ArtifactSink,
        should_stop: Callable[[], str],
        index: int,
        count: int,
        was_frozen: bool,
    ) -> dict[str, Any]:
        info = elfcore.read_process_info(pid)
        maps = elfcore.read_maps(pid)
        if not maps:
            raise ProcessLookupError(pid)  # a kernel thread or a zombie: no user memory
        # Plan under the tighter of --max-mb and what the bundle still accepts, so the core is
        # well-formed (maps left out are listed, not cut mid-segment) in the common case. Raw
        # size is an upper bound of the compressed size, so this never overshoots the cap.
        caps = [sink.bytes_remaining]
        if max_mb:
            caps.append(max_mb * MiB)
        cap = min(caps)
        resident = elfcore.read_resident(pid)
        sparse = elfcore.read_sparse(pid, maps, resident)
        layout = elfcore.plan_core(info, maps, max_bytes=cap, resident=resident, sparse=sparse)
        full = elfcore.plan_core(info, maps, resident=resident, sparse=sparse)
        if layout.size < full.size:
            self.context.log.warning(
                "memory: pid %d needs %d MiB, cap allows %d MiB; anonymous memory kept first",
                pid, full.size // MiB, cap // MiB,
            )
        disk_note = _disk_precheck(sink, layout.size)
        if disk_note:
            self.context.log.warning("memory: pid %d: %s", pid, disk_note)
        stopped = ""
        report = elfcore.DumpReport(pid=pid, layout=layout)

        def progress(done: int, total: int) -> None:
            frac = (index + done / max(total, 1)) / count
            job.progress(f"pid {pid}: {done // MiB}/{total // MiB} MiB", frac)

        with elfcore.ProcessMemory(pid) as mem, sink.artifact(
            f"{pid}.core.zst", ZSTD_MEDIA
        ) as writer:
            try:
                memory_frames.dump(
                    mem, report, writer, level=self._settings.zstd_level,
                    workers=self._settings.compress_workers, should_stop=should_stop,
                    progress=progress,
                )
                stopped = report.stopped
            except ByteCapReached as exc:
                stopped = "byte cap reached"
                self.context.log.warning("memory: pid %d: %s", pid, exc)
            stored = writer.size
        omitted = [
            {"start": hex(s.start), "end": hex(s.end), "perms": s.map.perms,
             "path": s.map.path, "reason": s.omitted}
            for s in layout.segments if s.omitted
        ]
        meta: dict[str, Any] = {
            "pid": pid,
            "comm": info.comm,
            "argv": list(info.argv),
            "ppid": info.ppid,
            "uid": info.uid,
            "maps": len(maps),
            "core_size": layout.size,
            "core_size_uncapped": full.size,
            "frozen": was_frozen,
            "written": report.written,
            "complete": report.complete and not stopped,
            "stopped": stopped,
            "omitted": omitted,
            "unreadable": [
                {"start": hex(a), "end": hex(b), "error": e}
                for a, b, e in report.unreadable
            ],
        }
        with contextlib.suppress(ByteCapReached), sink.artifact(
            f"{pid}.json", "application/json"
        ) as w:
            w.write(json.dumps(meta, indent=1).encode())
        return {
            "pid": pid,
            "artifact": f"{pid}.core.zst",
            "core_size": layout.size,
            "stored_bytes": stored,
            "frozen": was_frozen,
            "complete": meta["complete"],
            "stopped": stopped,
            "omitted_maps": len(omitted),
            "omitted_by_cap": sum(1 for o in omitted if o["reason"] == "size cap"),
            "unreadable_ranges": len(meta["unreadable"]),
            **({"disk_warning": disk_note} if disk_note else {}),
        }

    def _physical(
        self, job: CollectJob, sink: ArtifactSink, should_stop: Callable[[], str]
    ) -> dict[str, Any]:
        s = self._settings
        stopped = ""
        report: lime.PhysicalReport | None = None
        # Probe the sources before opening the artifact, so a host without any source gets a
        # clear failure and no empty artifact.
        plan = lime.select_source(s.physical_sources, s.iomem)
        with sink.artifact("physical.lime.zst", ZSTD_MEDIA) as writer:
            z = memory_frames.FrameWriter(writer, s.zstd_level, s.compress_workers)
            try:
                report = lime.acquire(
                    z.write, plan, lender=z,
                    max_bytes=sink.bytes_remaining, should_stop=should_stop,
                    progress=lambda d, t: job.progress(
                        f"physical: {d // MiB}/{t // MiB} MiB", d / max(t, 1)
                    ),
                )
                stopped = report.stopped
                z.close()
            except ByteCapReached:
                stopped = "byte cap reached"
            finally:
                with contextlib.suppress(ByteCapReached):
                    z.close()
        info: dict[str, Any] = {
            "artifact": "physical.lime.zst",
            "source": report.source if report else "",
            "ranges": [[hex(p.start), hex(p.end)] for p in report.ranges] if report else [],
            "missing": [[hex(r.start), hex(r.end)] for r in report.missing] if report else [],
            "unreadable": [[hex(a), hex(b), e] for a, b, e in report.unreadable] if report else [],
            "tried": report.tried if report else [],
            "complete": bool(report and report.complete) and not stopped,
            "stopped": stopped,
        }
        with contextlib.suppress(ByteCapReached), sink.artifact(
            "physical.json", "application/json"
        ) as w:
            w.write(json.dumps(info, indent=1).encode())
        return info
