"""Evidence: bundles (manifest, hashing while writing, signing, verify), the spool, and stores.

Layout:
    bundle.py      BundleWriter (implements collector.ArtifactSink), seal to <id>.tar.zst, verify
    manifest.py    the manifest schema (pydantic) and provenance
    signing.py     ed25519 keys: generate, sign, verify
    collect.py     run_collection(): one collection order -> one sealed bundle in the spool
    spool.py       durable upload queue on disk (nothing leaves it before the store confirmed)
    stores/        file:// and s3:// evidence stores behind one small interface
"""
