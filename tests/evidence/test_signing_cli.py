"""Signatures end to end, and the `keys generate` / `bundles verify` commands."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from dfir_ar.cli.main import main
from dfir_ar.collector import Outcome, Status
from dfir_ar.errors import EvidenceError
from dfir_ar.evidence.manifest import MEDIA_OCTETS
from dfir_ar.evidence.signing import generate_keypair, load_private_key
from dfir_ar.evidence.verify import verify_bundle
from tests.evidence.helpers import make_writer, read_members, repack, seal


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _signed_bundle(spool: Path, keydir: Path) -> Path:
    pair = generate_keypair(keydir)
    w = make_writer(spool, "processes", signing_key=load_private_key(pair.private_path))
    with w.artifact("p.bin", MEDIA_OCTETS) as f:
        f.write(b"signed evidence")
    result, report = seal(w, Outcome(Status.OK))
    assert report.ok, report.problems
    return result.path


def test_keys_generate_writes_private_0600_and_refuses_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keydir = tmp_path / "keys"
    code, out, _ = _run(["keys", "generate", "-o", str(keydir)], capsys)
    assert code == 0
    key = keydir / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in key.read_bytes()
    assert b"BEGIN PUBLIC KEY" in (keydir / "signing.pub").read_bytes()
    assert f'signing_key = "{key.resolve()}"' in out
    assert "verify_key" in out
    before = key.read_bytes()
    code, _, err = _run(["keys", "generate", "-o", str(keydir)], capsys)
    assert code == 7
    assert "refusing to overwrite" in err
    assert key.read_bytes() == before


def test_signature_valid_wrong_key_stripped_and_unsigned(spool_dir: Path, tmp_path: Path) -> None:
    path = _signed_bundle(spool_dir, tmp_path / "k1")
    pub = tmp_path / "k1" / "signing.pub"
    report = verify_bundle(path, pub)
    assert report.ok and report.signature == "valid"
    assert verify_bundle(path).signature == "not checked"

    other = generate_keypair(tmp_path / "k2")
    report = verify_bundle(path, other.public_path)
    assert not report.ok
    assert any("signed by key" in p for p in report.problems)

    members = read_members(path)
    del members["manifest.sig"]
    stripped = repack(path, members, tmp_path / "stripped.tar.zst")
    report = verify_bundle(stripped, pub)
    assert not report.ok
    assert any("manifest.sig is missing" in p for p in report.problems)
    # Without a key too: the manifest itself says it was signed.
    assert not verify_bundle(stripped).ok

    members = read_members(path)
    members["manifest.sig"] = bytes(64)
    assert not verify_bundle(repack(path, members, tmp_path / "badsig.tar.zst"), pub).ok


def test_unsigned_bundle_with_key_needs_allow_unsigned(spool_dir: Path, tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "k")
    w = make_writer(spool_dir, "c")
    with w.artifact("a", MEDIA_OCTETS) as f:
        f.write(b"x")
    result, _ = seal(w, Outcome(Status.OK))
    report = verify_bundle(result.path, pair.public_path)
    assert not report.ok and any("unsigned" in p for p in report.problems)
    assert verify_bundle(result.path, pair.public_path, allow_unsigned=True).ok


def test_public_key_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(EvidenceError, match="not a PEM ed25519 key"):
        verify_bundle(tmp_path / "x", bad)


def test_bundles_verify_cli_exit_codes_and_json(
    spool_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _signed_bundle(spool_dir, tmp_path / "k")
    pub = tmp_path / "k" / "signing.pub"
    code, out, _ = _run(["bundles", "verify", str(path), "--key", str(pub)], capsys)
    assert code == 0, out
    assert out.startswith("OK") and "signature valid" in out

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / path.name
    bad.write_bytes(data)
    code, out, err = _run(["bundles", "verify", str(bad), "--key", str(pub)], capsys)
    assert code == 7
    assert "FAIL" in out and "failed verification" in err

    code, out, _ = _run(
        ["bundles", "verify", "--json", "--allow-unsigned", str(path), str(bad)], capsys
    )
    assert code == 7
    docs = json.loads(out)
    assert [d["ok"] for d in docs] == [True, False]
    assert docs[0]["signature"] == "not checked"
    assert docs[0]["manifest"]["bundle_id"] == path.name.split(".")[0]
    assert docs[1]["problems"]


def test_standard_tools_read_and_check_a_bundle(spool_dir: Path, tmp_path: Path) -> None:
    """An analyst without dfir-ar: tar + zstd extract it (the trailer is a skippable frame),
    openssl checks the signature, sha256sum the artifacts."""
    import hashlib
    import subprocess

    from tests.conftest import require_tool

    require_tool("tar", "zstd", "openssl")
    path = _signed_bundle(spool_dir, tmp_path / "k")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(path), "-C", str(out)], check=True, timeout=30)
    subprocess.run(["zstd", "-tq", str(path)], check=True, timeout=30)
    done = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "k" / "signing.pub"),
         "-rawin", "-in", str(out / "manifest.json"), "-sigfile", str(out / "manifest.sig")],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_bytes())
    for entry in manifest["artifacts"]:
        data = (out / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
