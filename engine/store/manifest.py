"""The store manifest: what the latents are, where they came from, and whether encoding finished.

Each container keeps it in its own file (engine/store/container.py: ``Container.read_manifest``); every
container holds the same dictionary, checked here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engine.errors import UsageError

SCHEMA_VERSION = 2  # 2: block checksums, metadata checksums, integrity.json


class StoreError(UsageError):
    """A store that cannot be used as asked; the message names the store, the field and the fix."""


def fingerprint(obj: object) -> str:
    """sha256 of canonical JSON: equal settings give equal fingerprints on every machine."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


REQUIRED = (
    "schema_version",
    "dataset",
    "autoencoder",
    "image_size",
    "latent_shape",
    "splits",
    "folds",
    "settings_fingerprint",
)


def check_manifest(path: Path, file: Path, manifest: dict) -> dict:
    """``manifest`` (read from ``file`` of the store at ``path``) when this engine reads its schema version and it
    has every field; otherwise a StoreError naming the fix."""
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: manifest schema_version {version}, this engine reads {SCHEMA_VERSION}; "
            "re-encode with `engine encode --overwrite` or use the engine version that wrote it "
            f"({manifest.get('engine_version', 'unknown')})"
        )
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise StoreError(f"{file}: manifest lacks {', '.join(missing)}; it was edited or damaged, re-encode the store")
    return manifest


def write_json_atomic(path: Path, obj: object) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
