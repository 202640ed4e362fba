"""processes: every process with its identity, executable hash, open files and sockets, as JSONL;
the ones talking to the alert's source address are flagged.

Read straight from /proc rather than through psutil's per-process objects: psutil's
``open_files()`` stats every descriptor and ``net_connections()`` walks every descriptor of
every process a second time, which made it slower than ``lsof``. Here each process's ``fd/``
directory is read once; socket inodes are joined to the socket tables of the process's own
network namespace (``/proc/<pid>/net/*``, read once per namespace), so processes inside
containers or other namespaces show their real connections, which neither psutil nor a plain
``/proc/net`` read does.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import pwd
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from dfir_ar.collector import (
    ArtifactSink,
    ByteCapReached,
    CollectJob,
    Collector,
    OptionSpec,
    Outcome,
    Status,
)
from dfir_ar.responder import Arg

PROC = Path("/proc")
_MEDIA_JSONL = "application/x-ndjson"
_HASH_CHUNK = 1024 * 1024
_FLUSH_AT = 256 * 1024
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
    12: "NEW_SYN_RECV",
}
_INET_TABLES = (("tcp", 4, "tcp"), ("tcp6", 6, "tcp"), ("udp", 4, "udp"), ("udp6", 6, "udp"),
                ("raw", 4, "raw"), ("raw6", 6, "raw"), ("udplite", 4, "udplite"),
                ("udplite6", 6, "udplite"))


class ProcessesSettings(BaseModel):
    """``[collectors.processes]``."""

    model_config = ConfigDict(extra="forbid")
    hash_cache: bool = Field(
        default=True,
        description="Remember executable hashes by (device, inode, size, mtime, ctime) in the "
        "state dir, so repeated collections only hash what changed.",
    )


# -- /proc parsing (pure functions over text, so they are testable without a live system) ------


def parse_stat(text: str) -> tuple[str, str, int, int]:
    """(comm, state, ppid, starttime ticks) from /proc/PID/stat; comm may hold ') ' itself."""
    lpar, rpar = text.index("("), text.rindex(")")
    comm = text[lpar + 1 : rpar]
    rest = text[rpar + 2 :].split()
    return comm, rest[0], int(rest[1]), int(rest[19])


def parse_status_ids(text: str) -> tuple[list[int], list[int]]:
    uids: list[int] = []
    gids: list[int] = []
    for line in text.splitlines():
        if line.startswith("Uid:"):
            uids = [int(v) for v in line.split()[1:]]
        elif line.startswith("Gid:"):
            gids = [int(v) for v in line.split()[1:]]
            break
    return uids, gids


def hex_address(text: str) -> tuple[str, int]:
    """``0100007F:0050`` -> ('127.0.0.1', 80); IPv6 words are in host (little-endian) order."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        addr = str(ipaddress.IPv4Address(raw[::-1]))
    else:
        swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        v6 = ipaddress.IPv6Address(swapped)
        addr = str(v6.ipv4_mapped) if v6.ipv4_mapped is not None else v6.compressed
    return addr, int(port, 16)


def parse_inet_table(text: str, family: int, proto: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        inode = int(parts[9])
        if inode == 0:
            continue  # TIME_WAIT and friends: owned by no process
        laddr, lport = hex_address(parts[1])
        raddr, rport = hex_address(parts[2])
        st = int(parts[3], 16)
        entry: dict[str, Any] = {
            "proto": proto, "family": family, "laddr": laddr, "lport": lport,
            "raddr": raddr, "rport": rport,
        }
        if proto == "tcp":
            entry["state"] = TCP_STATES.get(st, str(st))
        yield inode, entry


def parse_unix_table(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    kinds = {1: "stream", 2: "dgram", 5: "seqpacket"}
    for line in text.splitlines()[1:]:
        parts = line.split(maxsplit=7)
        if len(parts) < 7:
            continue
        entry: dict[str, Any] = {"proto": "unix", "type": kinds.get(int(parts[4], 16), parts[4])}
        if len(parts) == 8:
            entry["path"] = parts[7]
        yield int(parts[6]), entry


def parse_netlink_table(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 10:
            yield int(parts[9]), {"proto": "netlink", "netlink_family": int(parts[1])}


def parse_packet_table(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """AF_PACKET sockets: a sniffer on the host is itself worth seeing."""
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 9:
            yield int(parts[8]), {"proto": "packet", "ethertype": int(parts[3], 16),
                                  "ifindex": int(parts[4])}


# -- collector -----------------------------------------------------------------------------------


@dataclass
class _Scan:
    srcip: str | None
    sockets_by_netns: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    users: dict[int, str | None] = field(default_factory=dict)
    hashes: dict[tuple[int, ...], Future[tuple[str | None, str]] | str] = field(
        default_factory=dict
    )
    talkers: list[dict[str, Any]] = field(default_factory=list)
    denied: list[int] = field(default_factory=list)
    vanished: list[int] = field(default_factory=list)
    cache_hits: int = 0
    hashed: int = 0


class Processes(Collector):
    """Every process: pid, ppid, user, cmdline, exe + SHA-256, cwd, start time, open files,
    sockets. One JSON object per line in processes.jsonl; processes with a connection to or
    from the alert's srcip carry talks_to_srcip = true and are listed in the manifest."""

    name: ClassVar[str] = "processes"
    expects: ClassVar[tuple[Arg, ...]] = ()
    version: ClassVar[str] = "1"
    default_duration: ClassVar[float] = 60.0
    Settings: ClassVar[type[BaseModel]] = ProcessesSettings
    option_specs: ClassVar[tuple[OptionSpec, ...]] = (
        OptionSpec("max-exe-mb", int, 256,
                   "Executables larger than this are not hashed (recorded as skipped)."),
        OptionSpec("hash-exes", bool, True, "Hash each distinct executable (--hash-exes=no: off)."),
    )

    def collect(self, job: CollectJob, sink: ArtifactSink) -> Outcome:
        srcip = str(job.target.srcip) if job.target.srcip is not None else None
        max_exe = int(job.options.get("max-exe-mb", 256)) * 1024 * 1024
        hash_exes = bool(job.options.get("hash-exes", True))
        cache_path = self.context.state_dir / "processes-exe-hashes.json"
        use_cache = bool(getattr(self.settings, "hash_cache", True)) and hash_exes
        cache = _load_cache(cache_path) if use_cache else {}
        scan = _Scan(srcip)
        btime = _boot_time()
        ticks = os.sysconf("SC_CLK_TCK")
        pids = sorted(int(n) for n in os.listdir(PROC) if n.isdigit())
        job.progress(f"{len(pids)} processes", 0.0)
        status, reason = Status.OK, ""
        written = 0
        # Hashing runs beside the /proc walk: hashlib releases the GIL on large buffers.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="exe-hash") as pool:
            records: list[dict[str, Any]] = []
            for index, pid in enumerate(pids):
                if job.should_stop():
                    status = Status.PARTIAL
                    reason = (f"stopped after {index} of {len(pids)} processes "
                              f"({'cancelled' if job.cancel.is_set() else 'deadline'})")
                    break
                if index and index % 1000 == 0:
                    job.progress(f"{index} of {len(pids)} processes read", index / len(pids))
                record = _read_process(pid, scan, btime, ticks)
                if record is None:
                    continue
                if hash_exes:
                    _submit_hash(pool, scan, cache, record, pid, max_exe)
                records.append(record)
            try:
                with sink.artifact("processes.jsonl", _MEDIA_JSONL) as out:
                    buf: list[bytes] = []
                    size = 0
                    for record in records:
                        _resolve_hash(scan, record, cache)
                        line = json.dumps(record, ensure_ascii=False,
                                          separators=(",", ":")).encode("utf-8") + b"\n"
                        buf.append(line)
                        size += len(line)
                        if size >= _FLUSH_AT:
                            written += _write_lines(out, buf)
                            buf, size = [], 0
                    written += _write_lines(out, buf)
            except ByteCapReached as exc:
                status, reason = Status.PARTIAL, str(exc)
        if use_cache:
            # Only binaries running now: the cache cannot grow without bound.
            _save_cache(cache_path, {
                _cache_key(k): v for k, v in scan.hashes.items() if isinstance(v, str)
            })
        job.progress(f"{written} processes written", 1.0)
        details = {
            "processes": written,
            "talks_to_srcip": scan.talkers,
            "access_denied_pids": scan.denied,
            "vanished_pids": scan.vanished,
            "network_namespaces": len(scan.sockets_by_netns),
            "exe_hashed": scan.hashed,
            "exe_hash_cache_hits": scan.cache_hits,
        }
        return Outcome(status, reason, details)


def _write_lines(out: Any, lines: list[bytes]) -> int:
    """Write whole lines until the cap (so the JSONL never ends mid-object); return how many."""
    if not lines:
        return 0
    try:
        out.write(b"".join(lines))
        return len(lines)
    except ByteCapReached:
        done = 0
        for line in lines:
            out.write(line)  # raises again at the line that does not fit
            done += 1
        return done


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        return fh.read()


def _boot_time() -> float:
    for line in _read_text("/proc/stat").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _read_process(pid: int, scan: _Scan, btime: float, ticks: int) -> dict[str, Any] | None:
    base = f"/proc/{pid}"
    try:
        comm, state, ppid, start_ticks = parse_stat(_read_text(f"{base}/stat"))
        uids, gids = parse_status_ids(_read_text(f"{base}/status"))
    except (FileNotFoundError, ProcessLookupError):
        scan.vanished.append(pid)
        return None
    except (OSError, ValueError, IndexError):
        scan.vanished.append(pid)
        return None
    denied: list[str] = []
    record: dict[str, Any] = {
        "pid": pid,
        "ppid": ppid,
        "name": comm,
        "state": state,
        "uid": uids[0] if uids else None,
        "euid": uids[1] if len(uids) > 1 else None,
        "gid": gids[0] if gids else None,
        "user": _user(scan, uids[0]) if uids else None,
        "start_time": round(btime + start_ticks / ticks, 2),
    }
    try:
        raw = _read_bytes(f"{base}/cmdline")
        record["cmdline"] = [a.decode("utf-8", "surrogateescape").encode(
            "utf-8", "backslashreplace").decode() for a in raw.rstrip(b"\0").split(b"\0")] \
            if raw else []
    except PermissionError:
        denied.append("cmdline")
    except OSError:
        pass
    for key in ("exe", "cwd", "root"):
        try:
            target = os.readlink(f"{base}/{key}")
        except PermissionError:
            denied.append(key)
            continue
        except OSError:
            record[key] = None  # kernel threads have none
            continue
        record[key] = _printable(target)
        if key == "exe" and target.endswith(" (deleted)"):
            # An executable deleted after start: a classic dropper trait, worth a flag.
            record["exe_deleted"] = True
    netns = None
    try:
        netns = os.readlink(f"{base}/ns/net")
    except PermissionError:
        denied.append("ns/net")
    except OSError:
        pass
    files: list[dict[str, Any]] = []
    sockets: list[dict[str, Any]] = []
    try:
        fds = os.listdir(f"{base}/fd")
    except PermissionError:
        denied.append("fd")
        fds = []
    except FileNotFoundError:
        scan.vanished.append(pid)
        return None
    except OSError:
        fds = []
    socket_table = _sockets_for(scan, pid, netns) if fds else {}
    for fd in sorted(fds, key=int):
        try:
            target = os.readlink(f"{base}/fd/{fd}")
        except OSError:
            continue  # closed between listdir and readlink
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            entry = dict(socket_table.get(inode, {"proto": "unknown"}))
            entry["fd"] = int(fd)
            entry["inode"] = inode
            sockets.append(entry)
        else:
            item: dict[str, Any] = {"fd": int(fd), "path": _printable(target)}
            if target.endswith(" (deleted)"):
                item["deleted"] = True
            files.append(item)
    record["open_files"] = files
    record["sockets"] = sockets
    if netns is not None:
        record["netns"] = netns
    if denied:
        record["access_denied"] = denied
        scan.denied.append(pid)
    if scan.srcip is not None:
        talks = any(s.get("raddr") == scan.srcip or s.get("laddr") == scan.srcip for s in sockets)
        record["talks_to_srcip"] = talks
        if talks:
            scan.talkers.append({"pid": pid, "name": comm, "cmdline": record.get("cmdline", []),
                                 "exe": record.get("exe")})
    return record


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _printable(text: str) -> str:
    """Paths are attacker-chosen bytes; keep them exact but valid UTF-8 in the JSON."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _user(scan: _Scan, uid: int) -> str | None:
    if uid not in scan.users:
        try:
            scan.users[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            scan.users[uid] = None
    return scan.users[uid]


def _sockets_for(scan: _Scan, pid: int, netns: str | None) -> dict[int, dict[str, Any]]:
    key = netns or "unknown"
    table = scan.sockets_by_netns.get(key)
    if table is not None:
        return table
    table = {}
    base = f"/proc/{pid}/net"
    for name, family, proto in _INET_TABLES:
        try:
            text = _read_text(f"{base}/{name}")
        except OSError:
            continue
        for inode, entry in parse_inet_table(text, family, proto):
            table[inode] = entry
    for name, parser in (("unix", parse_unix_table), ("netlink", parse_netlink_table),
                         ("packet", parse_packet_table)):
        with contextlib.suppress(OSError, ValueError):
            for inode, entry in parser(_read_text(f"{base}/{name}")):
                table[inode] = entry
    scan.sockets_by_netns[key] = table
    return table


# -- executable hashing -------------------------------------------------------------------------


def _submit_hash(pool: ThreadPoolExecutor, scan: _Scan, cache: dict[str, str],
                 record: dict[str, Any], pid: int, max_exe: int) -> None:
    if record.get("exe") is None:
        return
    try:
        # /proc/PID/exe opens the running binary itself, even if it was deleted or replaced.
        fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY)
    except OSError as exc:
        record["exe_sha256"] = None
        record["exe_hash_error"] = exc.strerror or str(exc)
        return
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    record["_hash_key"] = key
    if key in scan.hashes:
        os.close(fd)
        return
    cached = cache.get(_cache_key(key))
    if cached is not None:
        scan.hashes[key] = cached
        scan.cache_hits += 1
        os.close(fd)
        return
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_exe:
        os.close(fd)
        scan.hashes[key] = _done(None, f"not hashed: {st.st_size} bytes is over --max-exe-mb")
        return
    scan.hashed += 1
    scan.hashes[key] = pool.submit(_hash_fd, fd)


def _done(digest: str | None, error: str) -> Future[tuple[str | None, str]]:
    fut: Future[tuple[str | None, str]] = Future()
    fut.set_result((digest, error))
    return fut


def _hash_fd(fd: int) -> tuple[str | None, str]:
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "rb", buffering=0) as fh:
            while chunk := fh.read(_HASH_CHUNK):
                h.update(chunk)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    return h.hexdigest(), ""


def _resolve_hash(scan: _Scan, record: dict[str, Any], cache: dict[str, str]) -> None:
    key = record.pop("_hash_key", None)
    if key is None:
        return
    value = scan.hashes.get(key)
    if isinstance(value, str):
        record["exe_sha256"] = value
        return
    if value is None:
        return
    digest, error = value.result()
    record["exe_sha256"] = digest
    if digest is not None:
        scan.hashes[key] = digest
    else:
        record["exe_hash_error"] = error


def _cache_key(key: tuple[int, ...]) -> str:
    return ":".join(str(k) for k in key)


_cache_lock = threading.Lock()


def _load_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save_cache(path: Path, cache: dict[str, str]) -> None:
    with _cache_lock, contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)
