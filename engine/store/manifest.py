"""The store manifest: what the latents are, where they came from, and whether encoding finished.

zarr stores keep it in the root group's attributes under ``manifest``; webdataset stores in
``manifest.json`` beside the shards. Both hold the same dictionary.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engine.errors import UsageError

SCHEMA_VERSION = 2  # 2: block checksums, metadata checksums, integrity.json
MANIFEST_JSON = "manifest.json"
ZARR_META = "zarr.json"


class StoreError(UsageError):
    """A store that cannot be used as asked; the message names the store, the field and the fix."""


def fingerprint(obj: object) -> str:
    """sha256 of canonical JSON: equal settings give equal fingerprints on every machine."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def store_format(path: Path) -> str:
    """'zarr' or 'wds' from what lies at ``path``; a StoreError when it is neither."""
    if not path.exists():
        raise StoreError(f"{path}: no such store; write one with `engine encode --out {path}`")
    if (path / ZARR_META).is_file():
        return "zarr"
    if (path / MANIFEST_JSON).is_file():
        return "wds"
    raise StoreError(
        f"{path}: not a latent store (no {ZARR_META} or {MANIFEST_JSON}); was it written by `engine encode`?"
    )


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


def read_manifest(path: Path) -> dict:
    """The manifest of the store at ``path``, checked for a schema version this engine reads and its fields."""
    fmt = store_format(path)
    file = path / (ZARR_META if fmt == "zarr" else MANIFEST_JSON)
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"{file}: unreadable ({err}); the store's manifest is damaged, re-encode the store") from None
    manifest = meta.get("attributes", {}).get("manifest") if fmt == "zarr" else meta
    if manifest is None:
        raise StoreError(f"{path}: zarr group without a `manifest` attribute; it was not written by `engine encode`")
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
