"""`dfir-ar keys generate`: the ed25519 key pair that signs evidence bundles."""

from __future__ import annotations

from pathlib import Path

import click

from dfir_ar.cli.common import json_option, print_json

DEFAULT_KEY_DIR = Path("/etc/dfir-ar/keys")


@click.group("keys")
def keys() -> None:
    """Manage the key that signs evidence bundles."""


@keys.command("generate")
@click.option(
    "-o", "--output", "output", type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_KEY_DIR, show_default=True,
    help="Directory for signing.key (private, mode 0600) and signing.pub.",
)
@json_option
def generate(output: Path, as_json: bool) -> None:
    """Write a new ed25519 key pair; never overwrites an existing key.

    \b
    Agents sign each bundle's manifest with signing.key; responders check bundles with
    signing.pub (`dfir-ar bundles verify FILE --key signing.pub`). Keep signing.key on the
    agent only; copy signing.pub wherever bundles are verified.
    """
    from dfir_ar.evidence.signing import generate_keypair

    pair = generate_keypair(output)
    if as_json:
        print_json({
            "signing_key": str(pair.private_path.resolve()),
            "verify_key": str(pair.public_path.resolve()),
            "fingerprint": pair.fingerprint,
        })
        return
    click.echo(f"wrote {pair.private_path} (private, mode 0600) and {pair.public_path}")
    click.echo(f"fingerprint (SHA-256 of the public key): {pair.fingerprint}")
    click.echo("\nAdd to the [evidence] table of your config:\n")
    click.echo("[evidence]")
    click.echo(f'signing_key = "{pair.private_path.resolve()}"')
    click.echo(f'verify_key = "{pair.public_path.resolve()}"')
