"""pcap: timed capture of the attacker address's traffic, filtered in the kernel, written as raw
pcap records (no per-packet dissection), one file per interface.

How: one AF_PACKET socket per interface, created with protocol 0 (so it receives nothing), the
BPF program for ``host <srcip>`` (compiled by libpcap through scapy) attached, and only then
bound with ETH_P_ALL: no unfiltered packet can slip in before the filter, unlike a socket opened
with ETH_P_ALL first. Packets arrive in a TPACKET_V3 memory-mapped ring (what libpcap uses):
the kernel fills blocks with packets, their arrival timestamps (ns) and wire lengths, and the
collector walks them without a syscall per packet. Where the kernel refuses a ring, it falls
back to one recvmsg per packet with SO_TIMESTAMPNS and PACKET_AUXDATA for the same facts.
Kernel drop counts come from PACKET_STATISTICS.

VLAN tags the NIC (or veth) stripped into packet metadata are put back into the frames, as
libpcap does. Not done (known): interfaces created after the capture started are not captured.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dfir_ar.collector import (
    ArtifactSink,
    ArtifactWriter,
    ByteCapReached,
    CollectJob,
    Collector,
    OptionSpec,
    Outcome,
    Status,
)
from dfir_ar.errors import ExecutionError, InvalidArgument, PluginUnavailable
from dfir_ar.responder import Arg

log = logging.getLogger("dfir_ar.collector.pcap")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
PACKET_AUXDATA = 8
PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
ETH_P_8021Q = 0x8100
RING_BLOCK = 1 << 20  # >= the largest snaplen (256 KiB) plus headers
RING_TOTAL = 64 << 20  # shared by all captured interfaces, at least RING_MIN_PER_IF each
RING_MIN_PER_IF = 8 << 20
RING_RETIRE_MS = 50  # a block is handed over after this long even when not full
PACKET_OUTGOING = 4
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 65534  # tun devices: raw IP, no link header
DLT_EN10MB = 1
DLT_RAW = 12
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
# hatype -> (libpcap DLT to compile the filter for, pcap file link type)
LINK_TYPES = {
    ARPHRD_ETHER: (DLT_EN10MB, LINKTYPE_ETHERNET),
    ARPHRD_LOOPBACK: (DLT_EN10MB, LINKTYPE_ETHERNET),  # lo carries a zeroed Ethernet header
    ARPHRD_NONE: (DLT_RAW, LINKTYPE_RAW),
}
PCAP_MAGIC_NS = 0xA1B23C4D  # nanosecond-resolution pcap: kernel timestamps keep their precision
RECV_BUFFER = 64 * 1024 * 1024
FLUSH_AT = 512 * 1024
POLL_MS = 100
RESCAN_SECONDS = 1.0  # how often "every interface" looks for new ones
MAX_INTERFACES = 256
FINAL_DRAIN = 200_000
_RECORD = struct.Struct("<IIII")
_TIMESPEC = struct.Struct("@qq")
_AUXDATA = struct.Struct("@IIIHHHH")  # struct tpacket_auxdata
_AUX_LEN = struct.Struct("@4xI")  # its tp_len: the length on the wire
_BLOCK_HDR = struct.Struct("@8xIII")  # tpacket_block_desc: block_status, num_pkts, first offset
_PKT_HDR = struct.Struct("@IIIIIIH")  # tpacket3_hdr: next, sec, nsec, snaplen, len, status, mac
_PKTTYPE_AT = 48 + 10  # sockaddr_ll.sll_pkttype, after the 48-byte aligned tpacket3_hdr
_RING_VLAN = struct.Struct("@4xIH")  # tpacket3_hdr.hv1 from offset 28: vlan_tci, vlan_tpid
_TAG = struct.Struct("!HH")
_U32 = struct.Struct("@I")
_MEDIA_PCAP = "application/vnd.tcpdump.pcap"


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


BPF_RET_K = 0x06


def compile_bpf(expression: str, dlt: int, snaplen: int) -> list[tuple[int, int, int, int]]:
    """libpcap's BPF for ``expression`` on link type ``dlt``, accepting ``snaplen`` bytes.

    scapy compiles against a dead handle whose snapshot is its MTU (65535); every non-zero
    ``ret`` is rewritten to the requested snaplen, which is where libpcap itself puts it.
    """
    try:
        from scapy.arch.common import compile_filter
        from scapy.libs.winpcapy import pcap_freecode
    except (ImportError, OSError) as exc:
        raise PluginUnavailable(
            f"pcap: cannot load scapy/libpcap to compile BPF filters ({exc})",
            hint="pip install 'dfir-ar[pcap]' and apt-get install libpcap0.8",
        ) from exc
    try:
        prog = compile_filter(expression, linktype=dlt)
    except Exception as exc:  # scapy raises its own Scapy_Exception
        raise ExecutionError(f"pcap: libpcap refused the filter {expression!r}: {exc}") from exc
    try:
        insns = []
        for i in range(prog.bf_len):
            ins = prog.bf_insns[i]
            k = ins.k & 0xFFFFFFFF
            if ins.code == BPF_RET_K and k != 0:
                k = snaplen
            insns.append((ins.code, ins.jt, ins.jf, k))
    finally:
        pcap_freecode(ctypes.byref(prog))
    return insns


def attach_bpf(sock: socket.socket, insns: list[tuple[int, int, int, int]]) -> None:
    array = (_Insn * len(insns))(*[_Insn(*i) for i in insns])
    prog = _Prog(len(insns), ctypes.cast(array, ctypes.POINTER(_Insn)))
    # The kernel copies the program during the call; ``array`` only has to outlive it.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(prog))


def pcap_global_header(linktype: int, snaplen: int) -> bytes:
    return struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, linktype)


@dataclass
class Interface:
    name: str
    index: int
    hatype: int

    @property
    def is_loopback(self) -> bool:
        return self.hatype == ARPHRD_LOOPBACK


def list_interfaces(sys_net: Path = Path("/sys/class/net")) -> list[Interface]:
    out = []
    for entry in sorted(sys_net.iterdir()):
        try:
            hatype = int((entry / "type").read_text().strip())
            index = int((entry / "ifindex").read_text().strip())
        except (OSError, ValueError):
            continue
        out.append(Interface(entry.name, index, hatype))
    return out


@dataclass
class _Capture:
    iface: Interface
    sock: socket.socket
    linktype: int
    writer: ArtifactWriter | None = None
    buffer: bytearray = field(default_factory=bytearray)
    packets: int = 0
    bytes: int = 0
    kernel_received: int = 0
    kernel_dropped: int = 0
    gone: str = ""
    """Why capture on this interface ended early (it went down or was deleted)."""
    ring: _Ring | None = None
    """The TPACKET_V3 ring, or None when the kernel refused one (then recvmsg per packet)."""
    label: str = ""
    """Its name in the manifest: the interface's, with its index added when an earlier
    interface of the same name (deleted meanwhile) was captured too."""

    def read_stats(self) -> None:
        # PACKET_STATISTICS resets the counters on every read: accumulate.
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        received, dropped = struct.unpack("II", raw)
        self.kernel_received += received
        self.kernel_dropped += dropped


class _Ring:
    """A PACKET_RX_RING (TPACKET_V3) mapped into this process: the kernel fills blocks of
    packets with their timestamps and lengths, we walk them without a syscall per packet and
    hand each block back. This is how libpcap/tcpdump capture; recvmsg is the fallback."""

    def __init__(self, sock: socket.socket, block_size: int, block_nr: int) -> None:
        import mmap

        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frame_size = 2048
        req = struct.pack("@IIIIIII", block_size, block_nr, frame_size,
                          block_size // frame_size * block_nr, RING_RETIRE_MS, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.block_size = block_size
        self.block_nr = block_nr
        self.mm = mmap.mmap(sock.fileno(), block_size * block_nr, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.mm)
        self.current = 0

    def close(self) -> None:
        # A slice still referenced somewhere (a traceback frame) would make close() raise;
        # the mapping then goes with the last reference instead.
        with contextlib.suppress(BufferError):
            self.view.release()
            self.mm.close()


class _Stop(Exception):  # control flow, not an error
    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Pcap(Collector):
    """Timed packet capture of traffic to and from the alert's source address.

    One pcap file per interface (nanosecond timestamps), readable by tcpdump -r and tshark.
    The BPF filter `host <srcip>` runs in the kernel; kernel drop counts go in the manifest.
    """

    name: ClassVar[str] = "pcap"
    expects: ClassVar[tuple[Arg, ...]] = (Arg.SRCIP,)
    version: ClassVar[str] = "1"
    default_duration: ClassVar[float] = 600.0
    tool_modules: ClassVar[tuple[str, ...]] = ("scapy",)
    option_specs: ClassVar[tuple[OptionSpec, ...]] = (
        OptionSpec("duration", float, 600.0, "Seconds to capture."),
        OptionSpec("max-packets", int, 0, "Stop after this many packets (0: no limit)."),
        OptionSpec("max-bytes", int, 0, "Stop once the pcap files reach this size (0: no limit)."),
        OptionSpec("snaplen", int, 262144, "Bytes kept of each packet."),
        OptionSpec("interface", list, [], "Interface to capture on (repeatable; default: all, "
                   "including those that appear during the capture)."),
        OptionSpec("ring", bool, True, "Capture through a memory-mapped TPACKET_V3 ring, as "
                   "tcpdump does (--ring=no: one recvmsg per packet)."),
    )

    @classmethod
    def check_compatible(cls) -> None:
        if not hasattr(socket, "AF_PACKET"):
            raise PluginUnavailable("pcap: AF_PACKET sockets need Linux")
        import importlib.util

        if importlib.util.find_spec("scapy") is None:
            raise PluginUnavailable("pcap: scapy is not installed", hint="pip install 'dfir-ar[pcap]'")
        # scapy compiles BPF through libpcap; without it every capture would fail at alert time.
        # Load it by soname (ctypes.util.find_library would shell out to ldconfig).
        for soname in ("libpcap.so.0.8", "libpcap.so.1", "libpcap.so"):
            try:
                ctypes.CDLL(soname)
                return
            except OSError:
                continue
        raise PluginUnavailable("pcap: libpcap is not installed",
                                hint="apt-get install libpcap0.8 (or your distro's libpcap)")

    def collect(self, job: CollectJob, sink: ArtifactSink) -> Outcome:
        srcip = job.target.srcip
        if srcip is None:
            raise InvalidArgument("pcap needs a srcip (the address whose traffic is captured)")
        # Defence in depth: the filter text is built from a parsed address only.
        addr = ipaddress.ip_address(str(srcip))
        opts = job.options
        duration = float(opts.get("duration", 600.0))
        max_packets = int(opts.get("max-packets", 0))
        max_bytes = int(opts.get("max-bytes", 0))
        snaplen = int(opts.get("snaplen", 262144))
        wanted = list(opts.get("interface", []))
        if duration <= 0 or snaplen < 64 or snaplen > 262144 or max_packets < 0 or max_bytes < 0:
            raise InvalidArgument(
                "pcap: need duration > 0, 64 <= snaplen <= 262144, max-packets/max-bytes >= 0"
            )
        expression = f"host {addr.compressed}"
        interfaces, skipped = _select_interfaces(wanted)
        captures: list[_Capture] = []
        details: dict[str, Any] = {"filter": expression, "snaplen": snaplen,
                                   "skipped_interfaces": skipped}
        ring_bytes = 0
        if bool(opts.get("ring", True)):
            # The ring is pinned kernel memory: share one budget across interfaces.
            ring_bytes = max(RING_MIN_PER_IF, RING_TOTAL // max(1, len(interfaces)))
        try:
            for iface in interfaces:
                captures.append(_open_capture(iface, expression, snaplen, ring_bytes))
            with contextlib.ExitStack() as stack:
                files: set[str] = set()
                for cap in captures:
                    _start_file(cap, sink, stack, snaplen, files)
                late = None
                if not wanted:
                    # "Every interface" includes those that appear while the capture runs (a VPN
                    # tunnel, a container's veth): looked for every RESCAN_SECONDS.
                    late = _LateInterfaces(captures, sink, stack, expression, snaplen,
                                           ring_bytes > 0, skipped, files)
                status, reason = self._loop(job, captures, duration, max_packets, max_bytes,
                                            snaplen, sink.bytes_remaining, late)
                if late is not None and late.added:
                    details["added_mid_capture"] = late.added
        finally:
            for cap in captures:
                with contextlib.suppress(OSError):
                    cap.read_stats()
                if cap.ring is not None:
                    cap.ring.close()
                cap.sock.close()
        dropped = sum(c.kernel_dropped for c in captures)
        details.update({
            "packets": sum(c.packets for c in captures),
            "bytes": sum(c.bytes for c in captures),
            "kernel_dropped": dropped,
            "interfaces": {
                c.label: {"packets": c.packets, "bytes": c.bytes,
                               "mode": "ring" if c.ring is not None else "recvmsg",
                               "kernel_received": c.kernel_received,
                               "kernel_dropped": c.kernel_dropped,
                               **({"ended_early": c.gone} if c.gone else {})}
                for c in captures
            },
        })
        if dropped and status is Status.OK:
            status, reason = Status.PARTIAL, f"the kernel dropped {dropped} matching packets"
        gone = [c.gone for c in captures if c.gone]
        if gone and status is Status.OK:
            status, reason = Status.PARTIAL, f"interfaces went away mid-capture: {'; '.join(gone)}"
        return Outcome(status, reason, details)

    def _loop(self, job: CollectJob, captures: list[_Capture], duration: float,
              max_packets: int, max_bytes: int, snaplen: int,
              bundle_remaining: int, late: _LateInterfaces | None) -> tuple[Status, str]:
        poller = select.poll()
        by_fd = {}
        for cap in captures:
            poller.register(cap.sock.fileno(), select.POLLIN)
            by_fd[cap.sock.fileno()] = cap
        clock = job.clock
        start = clock.monotonic()
        end = start + duration
        job.progress(f"capturing host {job.target.srcip} on "
                     f"{', '.join(c.iface.name for c in captures) or 'no interface'}", 0.0)
        reader = _Reader(snaplen, max_packets, max_bytes, header_bytes=24 * len(captures),
                         bundle_remaining=bundle_remaining)
        next_progress = start + 5.0
        next_rescan = start + RESCAN_SECONDS
        try:
            while True:
                now = clock.monotonic()
                if late is not None and now >= next_rescan:
                    next_rescan = now + RESCAN_SECONDS
                    for cap in late.scan():
                        poller.register(cap.sock.fileno(), select.POLLIN)
                        by_fd[cap.sock.fileno()] = cap
                        reader.bytes += len(pcap_global_header(cap.linktype, snaplen))
                        job.progress(f"also capturing on {cap.iface.name} (it appeared "
                                     "mid-capture)", (now - start) / duration)
                stop = None
                if now >= job.deadline:
                    stop = _Stop(Status.PARTIAL, "collection deadline reached")
                elif job.cancel.is_set():
                    stop = _Stop(Status.PARTIAL, "cancelled before the capture duration ended")
                elif now >= end:
                    stop = _Stop(Status.OK, "")
                if stop is not None:
                    # What the kernel queued before the stop is part of the capture window; a
                    # ring hands over its partly filled block after the retire timeout.
                    if any(c.ring is not None for c in captures):
                        time.sleep(2 * RING_RETIRE_MS / 1000)
                    for cap in captures:
                        if not cap.gone:
                            reader.drain(cap, FINAL_DRAIN)
                    raise stop
                if now >= next_progress:
                    job.progress(f"{reader.packets} packets", (now - start) / duration)
                    next_progress = now + 5.0
                timeout = max(0, min(POLL_MS, int((min(end, job.deadline) - now) * 1000) + 1))
                for fd, event in poller.poll(timeout):
                    cap = by_fd[fd]
                    try:
                        # Bounded batch, so one busy interface cannot starve the clock checks.
                        reader.drain(cap, 4096)
                        if event & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                            # A ring never calls recv, so read the socket error ourselves.
                            err = cap.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                            if err:
                                raise OSError(err, os.strerror(err))
                    except OSError as exc:
                        # ENETDOWN/ENXIO: the interface went down or away mid-capture. Keep what
                        # was captured on it and go on with the others.
                        poller.unregister(fd)
                        del by_fd[fd]
                        cap.gone = f"{cap.iface.name}: {exc.strerror or exc}"
                        _flush(cap)
                        if not by_fd:
                            raise _Stop(Status.PARTIAL,
                                        f"capture interface went away ({cap.gone})") from None
        except _Stop as stop:
            return self._finish(captures, stop.status, stop.reason)
        except ByteCapReached as exc:
            return self._finish(captures, Status.PARTIAL, str(exc))

    @staticmethod
    def _finish(captures: list[_Capture], status: Status, reason: str) -> tuple[Status, str]:
        try:
            for cap in captures:
                _flush(cap)
        except ByteCapReached as exc:
            return Status.PARTIAL, str(exc)
        return status, reason


class _Reader:
    """Turns queued packets into pcap records; raises _Stop at --max-packets / --max-bytes."""

    def __init__(self, snaplen: int, max_packets: int, max_bytes: int, header_bytes: int,
                 bundle_remaining: int) -> None:
        self.snaplen = snaplen
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.packets = 0
        self.bytes = header_bytes
        # Records are buffered before they reach the writer, so stop at the bundle's cap here
        # rather than discover it at the next flush, seconds of capture later.
        self.bundle_limit = header_bytes + bundle_remaining
        self._buf = bytearray(snaplen)
        self._view = memoryview(self._buf)
        self._anc = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_AUXDATA.size)

    def _limit_reason(self) -> str:
        if self.max_bytes and self.max_bytes <= self.bundle_limit:
            return f"--max-bytes {self.max_bytes} reached"
        return "byte cap reached (the bundle's size limit)"

    def drain(self, cap: _Capture, budget: int) -> None:
        if cap.ring is not None:
            self._drain_ring(cap, cap.ring, max(1, budget // 256))
        else:
            self._drain_socket(cap, budget)

    def _drain_ring(self, cap: _Capture, ring: _Ring, blocks: int) -> None:
        mm, view, block_size = ring.mm, ring.view, ring.block_size
        snaplen = self.snaplen
        loopback = cap.iface.is_loopback
        ether = cap.linktype == LINKTYPE_ETHERNET and not loopback
        buf = cap.buffer
        pack = _RECORD.pack
        pkt_hdr = _PKT_HDR.unpack_from
        limit = min(self.max_bytes, self.bundle_limit) if self.max_bytes else self.bundle_limit
        max_packets = self.max_packets or -1
        total_bytes, total_packets = self.bytes, self.packets
        got = got_bytes = 0
        try:
            for _ in range(blocks):
                base = ring.current * block_size
                status, num, first = _BLOCK_HDR.unpack_from(mm, base)
                if not status & TP_STATUS_USER:
                    return
                off = base + first
                for _ in range(num):
                    nxt, sec, nsec, snap, length, st, mac = pkt_hdr(mm, off)
                    if not (loopback and mm[off + _PKTTYPE_AT] == PACKET_OUTGOING):
                        # lo delivers each packet twice; libpcap drops the outgoing copy too.
                        captured = snap if snap < snaplen else snaplen
                        frame: bytes | memoryview
                        if st & TP_STATUS_VLAN_VALID and ether:
                            tci, tpid = _RING_VLAN.unpack_from(mm, off + 28)
                            tag = _TAG.pack(tpid if st & TP_STATUS_VLAN_TPID_VALID
                                            else ETH_P_8021Q, tci & 0xFFFF)
                            frame = _with_tag(view[off + mac : off + mac + captured], tag)
                            captured = min(len(frame), snaplen)
                            length += 4
                        else:
                            frame = view[off + mac : off + mac + captured]
                        size = 16 + captured
                        if total_bytes + size > limit:
                            raise _Stop(Status.PARTIAL, self._limit_reason())
                        buf += pack(sec, nsec, captured, length)
                        buf += frame[:captured]
                        total_bytes += size
                        total_packets += 1
                        got += 1
                        got_bytes += size
                        if total_packets == max_packets:
                            raise _Stop(Status.OK, "")
                    off += nxt
                # Hand the block back to the kernel.
                _U32.pack_into(mm, base + 8, TP_STATUS_KERNEL)
                ring.current = (ring.current + 1) % ring.block_nr
                if len(buf) >= FLUSH_AT:
                    _flush(cap)
        finally:
            self.bytes, self.packets = total_bytes, total_packets
            cap.packets += got
            cap.bytes += got_bytes

    def _drain_socket(self, cap: _Capture, budget: int) -> None:
        # The per-packet path of the collector: locals only, one recvmsg, two appends.
        view, snaplen, recv = self._view, self.snaplen, cap.sock.recvmsg_into
        anc_size = self._anc
        flags = socket.MSG_TRUNC | socket.MSG_DONTWAIT
        loopback = cap.iface.is_loopback
        ether = cap.linktype == LINKTYPE_ETHERNET and not loopback
        buf = cap.buffer
        pack = _RECORD.pack
        ts_unpack = _TIMESPEC.unpack_from
        aux_len = _AUX_LEN.unpack_from
        limit = min(self.max_bytes, self.bundle_limit) if self.max_bytes else self.bundle_limit
        max_packets = self.max_packets or -1
        total_bytes, total_packets = self.bytes, self.packets
        got = got_bytes = 0
        try:
            for _ in range(budget):
                try:
                    n, anc, _flags, address = recv([view], anc_size, flags)
                except BlockingIOError:
                    return
                if loopback and address[2] == PACKET_OUTGOING:
                    continue  # lo delivers each packet twice; libpcap drops this copy too
                captured = n if n < snaplen else snaplen
                if len(anc) == 2 and anc[0][1] == SO_TIMESTAMPNS and anc[1][1] == PACKET_AUXDATA:
                    sec, nsec = ts_unpack(anc[0][2])
                    aux = anc[1][2]
                    original = aux_len(aux)[0]
                else:
                    sec, nsec, original = _ancillary(anc, n)
                    aux = b""
                frame: bytes | memoryview = view[:captured]
                if ether and len(aux) >= _AUXDATA.size:
                    st, _l, _s, _m, _n, tci, tpid = _AUXDATA.unpack_from(aux)
                    if st & TP_STATUS_VLAN_VALID:
                        tag = _TAG.pack(tpid if st & TP_STATUS_VLAN_TPID_VALID
                                        else ETH_P_8021Q, tci)
                        frame = _with_tag(frame, tag)
                        captured = min(len(frame), snaplen)
                        original += 4
                size = 16 + captured
                if total_bytes + size > limit:
                    raise _Stop(Status.PARTIAL, self._limit_reason())
                buf += pack(sec, nsec, captured, original)
                buf += frame[:captured]
                total_bytes += size
                total_packets += 1
                got += 1
                got_bytes += size
                if len(buf) >= FLUSH_AT:
                    _flush(cap)
                if total_packets == max_packets:
                    raise _Stop(Status.OK, "")
        finally:
            self.bytes, self.packets = total_bytes, total_packets
            cap.packets += got
            cap.bytes += got_bytes


def _with_tag(frame: bytes | memoryview, tag: bytes) -> bytes:
    """Put back the 802.1Q tag the NIC (or veth) stripped into skb metadata, after the two MAC
    addresses, so the file shows the frame as it was on the wire (libpcap does the same)."""
    return bytes(frame[:12]) + tag + bytes(frame[12:])


def _ancillary(anc: list[tuple[int, int, bytes]], received: int) -> tuple[int, int, int]:
    """(sec, nsec, original length). The BPF ``ret snaplen`` trims the packet in the kernel, so
    its length on the wire survives only in PACKET_AUXDATA's tp_len (as libpcap reads it)."""
    sec = nsec = -1
    original = received
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
        elif level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
            original = _AUXDATA.unpack_from(data)[1]
    if sec < 0:
        now = time.time_ns()
        sec, nsec = now // 1_000_000_000, now % 1_000_000_000
    return sec, nsec, original


def _flush(cap: _Capture) -> None:
    """Write the buffered records; at the byte cap, keep whole records only (pcap stays valid)."""
    if not cap.buffer or cap.writer is None:
        return
    data = bytes(cap.buffer)
    cap.buffer.clear()
    try:
        cap.writer.write(data)
    except ByteCapReached:
        # Write record by record until the cap, so everything that fits is kept.
        offset = 0
        while offset < len(data):
            _, _, incl, _ = _RECORD.unpack_from(data, offset)
            end = offset + _RECORD.size + incl
            cap.writer.write(data[offset:end])
            offset = end
        raise


def _start_file(cap: _Capture, sink: ArtifactSink, stack: contextlib.ExitStack, snaplen: int,
                taken: set[str]) -> None:
    """Open the capture's pcap artifact (named after its interface) and write the header."""
    name = _safe_name(cap.iface.name)
    cap.label = cap.iface.name
    if name in taken:  # a deleted interface's name, now reused by a new one
        name = f"{name}-{cap.iface.index}"
        cap.label = f"{cap.iface.name}-{cap.iface.index}"
    taken.add(name)
    cap.writer = stack.enter_context(sink.artifact(f"{name}.pcap", _MEDIA_PCAP))
    cap.writer.write(pcap_global_header(cap.linktype, snaplen))


class _LateInterfaces:
    """Finds interfaces that appeared after the capture started and opens captures on them."""

    def __init__(self, captures: list[_Capture], sink: ArtifactSink, stack: contextlib.ExitStack,
                 expression: str, snaplen: int, ring: bool, skipped: dict[str, str],
                 files: set[str]) -> None:
        self._captures = captures
        self._sink = sink
        self._stack = stack
        self._expression = expression
        self._snaplen = snaplen
        self._skipped = skipped
        self._ring = ring  # --ring=no stays recvmsg for late interfaces too
        # A budget of their own, so late interfaces also get rings after the first ones took
        # theirs: at most RING_TOTAL // 2 more pinned memory.
        self._ring_left = RING_TOTAL // 2
        self._known = {cap.iface.index for cap in captures}
        self._files = files
        self.added: list[str] = []

    def scan(self) -> list[_Capture]:
        """Captures opened (artifact started) on interfaces not seen before."""
        new: list[_Capture] = []
        for iface in list_interfaces():
            if iface.index in self._known:
                continue
            self._known.add(iface.index)
            why = _unsupported(iface)
            if why:
                self._skipped[iface.name] = why
                continue
            if len(self._captures) >= MAX_INTERFACES:
                self._skipped[iface.name] = f"appeared after {MAX_INTERFACES} were captured"
                continue
            # Late rings share their own RING_TOTAL // 2 of pinned kernel memory; past that,
            # packets are read one recvmsg at a time.
            ring_bytes = RING_MIN_PER_IF if self._ring and self._ring_left >= RING_MIN_PER_IF else 0
            try:
                cap = _open_capture(iface, self._expression, self._snaplen, ring_bytes)
            except ExecutionError as exc:  # gone again already, or refused: noted, not fatal
                self._skipped[iface.name] = str(exc)
                continue
            self._captures.append(cap)  # from here on collect() closes it
            self._ring_left -= ring_bytes if cap.ring is not None else 0
            _start_file(cap, self._sink, self._stack, self._snaplen, self._files)
            self.added.append(cap.label)
            log.info("pcap: %s appeared mid-capture; capturing on it too", iface.name)
            new.append(cap)
        return new


def _safe_name(ifname: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in ifname) or "if"


def _unsupported(iface: Interface) -> str:
    """Why packets of ``iface`` cannot be captured, or ''."""
    if iface.hatype in LINK_TYPES:
        return ""
    return f"link type {iface.hatype} is not Ethernet, loopback or raw IP"


def _select_interfaces(wanted: list[str]) -> tuple[list[Interface], dict[str, str]]:
    available = {i.name: i for i in list_interfaces()}
    skipped: dict[str, str] = {}
    if wanted:
        missing = [w for w in wanted if w not in available]
        if missing:
            raise InvalidArgument(
                f"pcap: no interface named {', '.join(missing)} "
                f"(have: {', '.join(sorted(available))})"
            )
        chosen = [available[w] for w in wanted]
    else:
        chosen = list(available.values())
    usable = []
    for iface in chosen:
        why = _unsupported(iface)
        if why:
            skipped[iface.name] = why
        else:
            usable.append(iface)
    if not usable:
        raise ExecutionError(f"pcap: no interface to capture on (skipped: {skipped})")
    return usable, skipped


def _open_capture(iface: Interface, expression: str, snaplen: int, ring_bytes: int) -> _Capture:
    dlt, linktype = LINK_TYPES[iface.hatype]
    program = compile_bpf(expression, dlt, snaplen)
    # Protocol 0: the socket receives nothing until bind() below, after the filter is in place.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    ring: _Ring | None = None
    try:
        attach_bpf(sock, program)
        if ring_bytes:
            try:
                ring = _Ring(sock, RING_BLOCK, max(1, ring_bytes // RING_BLOCK))
            except OSError as exc:
                log.info("pcap: no packet ring on %s (%s); reading packet by packet",
                         iface.name, exc)
                ring = None
        if ring is None:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            try:
                # Root may exceed rmem_max: a deep queue rides out bursts while Python catches up.
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECV_BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((iface.name, ETH_P_ALL))
        sock.setblocking(False)
        # Counters from before bind() are noise; start from zero.
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    except PermissionError as exc:
        if ring is not None:
            ring.close()
        sock.close()
        raise ExecutionError(f"pcap: opening a packet socket on {iface.name} needs root "
                             f"(CAP_NET_RAW): {exc}") from exc
    except OSError as exc:
        if ring is not None:
            ring.close()
        sock.close()
        raise ExecutionError(f"pcap: cannot capture on {iface.name}: {exc}") from exc
    return _Capture(iface, sock, linktype, ring=ring)


def iter_pcap_records(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(sec, nsec, captured, original) of each record in a pcap file we wrote (tests, tools)."""
    offset = 24
    while offset < len(data):
        sec, nsec, incl, orig = _RECORD.unpack_from(data, offset)
        yield sec, nsec, incl, orig
        offset += _RECORD.size + incl
