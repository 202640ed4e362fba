"""ed25519 keys for bundles: generate, load, sign the manifest bytes, verify a signature.

ed25519 because signatures are small and deterministic, keys are 32 bytes, and OpenSSL can check
them without dfir-ar (``openssl pkeyutl -verify -pubin -inkey signing.pub -rawin``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dfir_ar.errors import ConfigError, EvidenceError

log = logging.getLogger("dfir_ar.evidence.signing")

PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    fingerprint: str


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: what the manifest names as its signer."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_keypair(directory: Path) -> KeyPair:
    """Write ``signing.key`` (PEM PKCS8, mode 0600) and ``signing.pub``; never overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / PRIVATE_NAME
    public_path = directory / PUBLIC_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise EvidenceError(
                f"{path} already exists; refusing to overwrite a key "
                "(move it away first, or pick another directory with -o)"
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL: a concurrent run cannot clobber a key; 0600 from creation, never world-readable.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(public_pem)
    return KeyPair(private_path, public_path, fingerprint(key.public_key()))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"evidence.signing_key {path}: cannot read ({exc.strerror}); "
            "create one with `dfir-ar keys generate`"
        ) from exc
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode
        if mode & 0o077:
            # Like ssh, say so loudly: anyone who can read it can forge evidence signatures.
            log.warning("evidence.signing_key %s is readable by group/others (mode %o); "
                        "run: chmod 600 %s", path, mode & 0o777, path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"evidence.signing_key {path}: not an unencrypted PEM key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"evidence.signing_key {path}: not an ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EvidenceError(f"public key {path}: cannot read ({exc.strerror})") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        # Accept the private key file too: its public half is what verifies.
        try:
            return load_private_key(path).public_key()
        except ConfigError:
            raise EvidenceError(f"public key {path}: not a PEM ed25519 key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceError(f"public key {path}: not an ed25519 key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
