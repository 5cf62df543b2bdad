"""The store containers by name: the one place a container is picked, from ``--format`` or from what lies on disk.

Adding a container is one entry in ``FORMATS`` (and its module, implementing ``Container``).
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import UsageError
from engine.store.container import Container
from engine.store.manifest import StoreError
from engine.store.wds_store import WdsFormat
from engine.store.zarr_store import ZarrFormat

FORMATS: dict[str, Container] = {c.name: c for c in (ZarrFormat(), WdsFormat())}


def format_named(name: str) -> Container:
    """The container ``--format NAME`` asks for."""
    try:
        return FORMATS[name]
    except KeyError:
        raise UsageError(f"--format {name!r}: expected one of {', '.join(FORMATS)}") from None


def store_format(path: Path) -> Container:
    """The container of the store at ``path``; a StoreError when nothing, or no store, is there."""
    if not path.exists():
        raise StoreError(f"{path}: no such store; write one with `engine encode --out {path}`")
    for container in FORMATS.values():
        if container.holds(path):
            return container
    markers = " or ".join(c.marker for c in FORMATS.values())
    raise StoreError(f"{path}: not a latent store (no {markers}); was it written by `engine encode`?")


def read_manifest(path: Path) -> dict:
    """The checked manifest of the store at ``path``, whichever container holds it."""
    return store_format(path).read_manifest(path)
