"""pcap collector against real traffic between two network namespaces, read back by tcpdump."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.pcap import Pcap, compile_bpf, iter_pcap_records
from dfir_ar.collector import CollectJob, CollectorContext, Status
from dfir_ar.config.models import Config
from dfir_ar.errors import InvalidArgument
from dfir_ar.evidence.collect import run_collection
from dfir_ar.evidence.manifest import Trigger
from dfir_ar.evidence.verify import verify_bundle
from dfir_ar.responder import Target
from dfir_ar.validate import parse_ip
from tests.conftest import require_root, require_tool
from tests.evidence.helpers import extract_artifact, read_members
from tests.netns import NetPair, net_pair

REPO = Path(__file__).resolve().parents[2]
OTHER4 = "198.51.100.7"  # a second attacker-side address whose traffic must NOT be captured
BROADCAST4 = "198.51.100.255"  # the pair's /24: no ARP before, no ICMP error after a datagram

SENDER = r"""
import socket, sys, time
src, dst, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
if fam == socket.AF_INET:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind((src, 0))
for i in range(count):
    s.sendto(b"x" * size, (dst, 40000 + i % 7))
    time.sleep(0.002)
"""


@pytest.fixture
def pair() -> Iterator[NetPair]:
    require_root()
    require_tool("ip", "tcpdump")
    with net_pair("pc") as p:
        p.in_attacker("ip", "addr", "add", f"{OTHER4}/24", "dev", p.attacker_if)
        yield p


def send_udp(pair: NetPair, src: str, dst: str, count: int, size: int = 100) -> None:
    pair.in_attacker(sys.executable, "-c", SENDER, src, dst, str(count), str(size), timeout=30)


class Runner:
    """tests/collectors/pcap_runner.py in the agent namespace: its stdout lines arrive on a queue
    (so waiting for one is bounded and never blocks on a buffered pipe), stdin takes commands."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)
            self.lines.put(line.strip())
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err.extend(self.proc.stderr)

    def expect(self, prefix: str, timeout: float = 20) -> str:
        """The next stdout line starting with ``prefix``; returns as soon as it arrives."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self.proc.wait(timeout=30)
                raise AssertionError(f"the capture ended before printing {prefix!r}: "
                                     f"{''.join(self.out)}{''.join(self.err)}")
            if line.startswith(prefix):
                return line
        raise AssertionError(f"the capture never printed {prefix!r} within {timeout:g} s")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        """End the capture window now: the collector sees its --duration reached (status ok)
        at its next poll, then drains what the kernel already queued."""
        self.send("STOP")

    def packets_read(self, at_least: int, timeout: float = 20) -> int:
        """Wait until the collector has read ``at_least`` packets (it reports its count)."""
        end = time.monotonic() + timeout
        count = -1
        while time.monotonic() < end:
            self.send("COUNT")
            count = int(self.expect("PACKETS ", max(0.1, end - time.monotonic())).split()[1])
            if count >= at_least:
                return count
            time.sleep(0.05)
        raise AssertionError(f"the capture read {count} packets, not {at_least}, in {timeout:g} s")

    def finish(self, *, stop: bool = False) -> dict[str, str]:
        """Wait for the BundleResult. ``stop``: end the capture window first (see ``stop``);
        a test passes it once its traffic is done, or when it fails before that."""
        assert self.proc.stdin is not None
        if stop:
            with contextlib.suppress(BrokenPipeError):  # it ended already
                self.stop()
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the capture did not end within 60 s") from None
        finally:
            for reader in self._readers:
                reader.join(10)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        assert self.proc.returncode == 0, "".join(self.err)
        result: dict[str, str] = json.loads(self.out[-1])
        return result


def start_capture(pair: NetPair, spool: Path, srcip: str, *options: str, deadline: float = 30,
                  bundle_bytes: int = 1 << 30) -> Runner:
    runner = Runner(pair.agent_argv([sys.executable, "-m", "tests.collectors.pcap_runner",
                                     str(spool), srcip, str(deadline), str(bundle_bytes),
                                     *options]))
    try:
        runner.expect("READY", 60)  # the capture is open and filtered once this arrives
    except AssertionError:
        runner.proc.kill()
        runner.proc.wait()
        raise
    return runner


def tcpdump_count(pcap: Path, expression: str) -> int:
    done = subprocess.run(["tcpdump", "-nn", "-r", str(pcap), expression],
                          capture_output=True, text=True, timeout=30, check=True)
    return len([ln for ln in done.stdout.splitlines() if ln.strip()])


@pytest.mark.parametrize("ring", ["yes", "no"])
def test_capture_has_exactly_the_attackers_packets(pair: NetPair, tmp_path: Path,
                                                   ring: str) -> None:
    # The window is long and ends when the traffic is done (STOP), so it never races the senders.
    runner = start_capture(pair, tmp_path, pair.a4, "--duration", "60", f"--ring={ring}",
                           deadline=600)
    try:
        send_udp(pair, pair.a4, pair.b4, 40)
        send_udp(pair, OTHER4, pair.b4, 25)
        assert pair.ping_ok(count=3, wait=1)
    finally:
        result = runner.finish(stop=True)  # the traffic is done: the window ends at once
    bundle = Path(result["path"])
    report = verify_bundle(bundle)
    assert report.ok, report.problems
    assert result["status"] == "ok"
    pcap = extract_artifact(bundle, f"artifacts/pcap/{pair.agent_if}.pcap", tmp_path / "a.pcap")
    assert tcpdump_count(pcap, f"udp and src host {pair.a4}") == 40
    assert tcpdump_count(pcap, f"host {OTHER4}") == 0
    assert tcpdump_count(pcap, "icmp[icmptype] == icmp-echo") == 3
    assert tcpdump_count(pcap, "icmp[icmptype] == icmp-echoreply") == 3
    # tcpdump reads every record we wrote, and the manifest counts the same.
    data = pcap.read_bytes()
    records = list(iter_pcap_records(data))
    assert tcpdump_count(pcap, "") == len(records)
    assert report.manifest is not None
    (rec,) = report.manifest.collectors
    assert rec.details["interfaces"][pair.agent_if]["packets"] == len(records)
    assert rec.details["interfaces"][pair.agent_if]["mode"] == ("ring" if ring == "yes"
                                                                else "recvmsg")
    assert rec.details["kernel_dropped"] == 0
    assert rec.details["filter"] == f"host {pair.a4}"
    assert "lo" in rec.details["interfaces"]
    assert all(incl == orig for _, _, incl, orig in records)
    assert report.manifest.tools.get("scapy")


def test_ipv6_max_packets_and_snaplen(pair: NetPair, tmp_path: Path) -> None:
    runner = start_capture(pair, tmp_path, pair.a6, "--duration", "20", "--max-packets", "10",
                           "--snaplen", "80", "--interface", pair.agent_if)
    try:
        send_udp(pair, pair.a6, pair.b6, 30, size=300)
    finally:
        result = runner.finish()
    assert result["status"] == "ok"
    bundle = Path(result["path"])
    assert verify_bundle(bundle).ok
    pcap = extract_artifact(bundle, f"artifacts/pcap/{pair.agent_if}.pcap", tmp_path / "6.pcap")
    records = list(iter_pcap_records(pcap.read_bytes()))
    assert len(records) == 10 == tcpdump_count(pcap, f"host {pair.a6}")
    assert all(incl <= 80 for _, _, incl, _ in records)
    assert any(orig > 300 for _, _, _, orig in records)  # original length kept beside the cut
    names = [n for n in read_members(bundle) if n.endswith(".pcap")]
    assert names == [f"artifacts/pcap/{pair.agent_if}.pcap"]


def test_max_bytes_and_bundle_cap_leave_a_valid_partial_pcap(pair: NetPair, tmp_path: Path) -> None:
    for option, cap, reason in (
        (["--max-bytes", "3000"], 1 << 30, "--max-bytes 3000"),
        ([], 2500, "byte cap"),
    ):
        spool = tmp_path / reason.replace(" ", "_")
        runner = start_capture(pair, spool, pair.a4, "--duration", "20",
                               "--interface", pair.agent_if, *option, bundle_bytes=cap)
        try:
            send_udp(pair, pair.a4, pair.b4, 60, size=100)
        finally:
            result = runner.finish()
        assert result["status"] == "partial", result
        bundle = Path(result["path"])
        report = verify_bundle(bundle)
        assert report.ok, report.problems
        assert report.manifest is not None
        assert reason in report.manifest.collectors[0].reason
        pcap = extract_artifact(bundle, f"artifacts/pcap/{pair.agent_if}.pcap", spool / "p.pcap")
        size = pcap.stat().st_size
        assert 0 < size <= 3000
        records = list(iter_pcap_records(pcap.read_bytes()))
        assert len(records) > 5
        assert tcpdump_count(pcap, "") == len(records)


def test_deadline_before_duration_is_partial(pair: NetPair, tmp_path: Path) -> None:
    runner = start_capture(pair, tmp_path, pair.a4, "--duration", "600", "--interface",
                           pair.agent_if, deadline=2)
    result = runner.finish()
    assert result["status"] == "partial"
    report = verify_bundle(Path(result["path"]))
    assert report.ok
    assert report.manifest is not None
    assert "deadline" in report.manifest.collectors[0].reason


def test_bad_interface_and_options_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--snaplen"):
        Pcap.parse_options(["--snaplen", "big"])
    config = Config.model_validate({"evidence": {"spool_dir": str(tmp_path), "min_free_mb": 0}})
    job = CollectJob(target=Target(srcip=parse_ip("203.0.113.7")),
                     options=Pcap.parse_options(["--interface", "nosuch0", "--duration", "1"]),
                     deadline=1e18, max_bytes=1 << 20)
    result = run_collection(Pcap(CollectorContext(state_dir=tmp_path)), job,
                            trigger=Trigger(srcip="203.0.113.7"), config=config)
    assert result.status is Status.FAILED
    report = verify_bundle(result.path)
    assert report.ok and report.manifest is not None
    assert "no interface named nosuch0" in report.manifest.collectors[0].error


def test_filter_is_compiled_for_the_snaplen() -> None:
    prog = compile_bpf("host 2001:db8::6", 1, 96)
    rets = [k for code, _, _, k in prog if code == 0x06]
    assert set(rets) == {0, 96}


def test_interface_deleted_mid_capture_keeps_what_was_captured(pair: NetPair,
                                                               tmp_path: Path) -> None:
    # Only the interface going away may end this capture: the window and deadline are far
    # beyond the clock steps packets_read takes.
    runner = start_capture(pair, tmp_path, pair.a4, "--duration", "3600", "--interface",
                           pair.agent_if, deadline=7200)
    try:
        # Broadcast, so these 12 are all the traffic the filter matches (unicast would add an
        # ARP exchange and rate-limited "port unreachable"s): 12 read = all of them read.
        send_udp(pair, pair.a4, BROADCAST4, 12)
        runner.packets_read(12)
        pair.in_attacker("ip", "link", "del", pair.attacker_if)  # takes the peer with it
    finally:
        result = runner.finish()
    assert result["status"] == "partial"
    bundle = Path(result["path"])
    report = verify_bundle(bundle)
    assert report.ok, report.problems
    assert report.manifest is not None
    assert "went away" in report.manifest.collectors[0].reason
    pcap = extract_artifact(bundle, f"artifacts/pcap/{pair.agent_if}.pcap", tmp_path / "g.pcap")
    assert tcpdump_count(pcap, f"udp and src host {pair.a4}") == 12
    assert tcpdump_count(pcap, "") == 12  # nothing else matched: packets_read(12) saw them all


def test_an_interface_created_mid_capture_is_captured_too(pair: NetPair, tmp_path: Path) -> None:
    # The attacker's address lives only on a link that does not exist when the capture starts.
    late_att, late_agt = f"lx{pair.attacker_if[2:]}", f"ly{pair.agent_if[2:]}"
    attacker, agent = "203.0.113.66", "203.0.113.65"
    runner = start_capture(pair, tmp_path, attacker, "--duration", "60", deadline=600)
    try:
        pair.in_attacker("ip", "link", "add", late_att, "type", "veth", "peer", "name", late_agt)
        pair.in_attacker("ip", "link", "set", late_agt, "netns", pair.agent)
        pair.in_attacker("ip", "addr", "add", f"{attacker}/24", "dev", late_att)
        pair.in_agent("ip", "addr", "add", f"{agent}/24", "dev", late_agt)
        pair.in_attacker("ip", "link", "set", late_att, "up")
        pair.in_agent("ip", "link", "set", late_agt, "up")
        runner.expect(f"ADDED {late_agt}", 20)
        send_udp(pair, attacker, agent, 20)
    finally:
        result = runner.finish(stop=True)  # the traffic is done: the window ends at once
    assert result["status"] == "ok"
    bundle = Path(result["path"])
    report = verify_bundle(bundle)
    assert report.ok, report.problems
    assert report.manifest is not None
    details = report.manifest.collectors[0].details
    assert details["added_mid_capture"] == [late_agt]
    assert details["interfaces"][late_agt]["packets"] >= 20
    pcap = extract_artifact(bundle, f"artifacts/pcap/{late_agt}.pcap", tmp_path / "late.pcap")
    assert tcpdump_count(pcap, f"udp and src host {attacker}") == 20


def test_ring_walk_puts_back_vlan_tags_the_kernel_stripped(tmp_path: Path) -> None:
    """This kernel has no 802.1Q support, so the block a NIC would fill is built here the way
    the kernel lays it out (tpacket_block_desc + tpacket3_hdr + sockaddr_ll), with the tag in
    the metadata; the capture file must carry it in the frame, as tcpdump shows it."""
    import socket
    import struct

    from collectors.pcap import (
        ARPHRD_ETHER,
        LINKTYPE_ETHERNET,
        TP_STATUS_USER,
        TP_STATUS_VLAN_VALID,
        Interface,
        _Capture,
        _Reader,
        _Ring,
        pcap_global_header,
    )

    require_tool("tcpdump")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 4, 1, 0, 64, 17, 0,
                     socket.inet_aton("203.0.113.6"), socket.inet_aton("203.0.113.5"))
    frame = (bytes.fromhex("020000000005") + bytes.fromhex("020000000006") + b"\x08\x00" + ip
             + struct.pack("!HHHH", 40000, 9, 12, 0) + b"data")
    block = bytearray(8192)
    first, mac = 48, 96
    struct.pack_into("@III", block, 8, TP_STATUS_USER, 2, first)
    for i, vlan in enumerate((True, False)):
        off = first + i * 256
        status = TP_STATUS_USER | (TP_STATUS_VLAN_VALID if vlan else 0)
        struct.pack_into("@IIIIIIHH", block, off, 256 if i == 0 else 0, 1_700_000_000, 5,
                         len(frame), len(frame), status, mac, mac + 14)
        struct.pack_into("@IIH", block, off + 28, 0, 0x2000 | 10, 0)  # PCP 1, VLAN 10
        block[off + mac : off + mac + len(frame)] = frame
    ring = _Ring.__new__(_Ring)
    ring.mm, ring.view = block, memoryview(block)  # type: ignore[assignment]
    ring.block_size, ring.block_nr, ring.current = len(block), 1, 0
    cap = _Capture(Interface("eth0", 2, ARPHRD_ETHER), socket.socket(), LINKTYPE_ETHERNET,
                   ring=ring)
    try:
        reader = _Reader(65535, 0, 0, header_bytes=24, bundle_remaining=1 << 20)
        reader.drain(cap, 4096)
    finally:
        cap.sock.close()
    assert reader.packets == 2
    assert struct.unpack_from("@I", block, 8)[0] == 0  # the block went back to the kernel
    pcap = tmp_path / "vlan.pcap"
    pcap.write_bytes(pcap_global_header(LINKTYPE_ETHERNET, 65535) + bytes(cap.buffer))
    assert tcpdump_count(pcap, "vlan 10 and udp and src host 203.0.113.6") == 1
    # (libpcap shifts offsets after a "vlan" term, so it goes last)
    assert tcpdump_count(pcap, "udp and src host 203.0.113.6 and not vlan") == 1
    (tagged, plain) = list(iter_pcap_records(pcap.read_bytes()))
    assert tagged[2] == tagged[3] == len(frame) + 4 and plain[2] == len(frame)
