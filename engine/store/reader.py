"""Open a latent store of either container behind one interface."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from engine.store import wds_store, zarr_store
from engine.store.manifest import StoreError, read_manifest, store_format


class SplitData(Protocol):
    """One split: metadata arrays in full, latents by row range (blocks read whole)."""

    name: str
    has_logvar: bool

    @property
    def size(self) -> int: ...
    @property
    def block(self) -> int: ...
    def meta(self, key: str) -> np.ndarray:
        """``keys``, ``labels``, ``folds``, ``groups`` or ``valid``, all rows."""
    def read(self, key: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of ``latents``, ``logvar`` or ``valid``."""
    def done_flags(self) -> np.ndarray: ...
    def block_moments(self) -> np.ndarray: ...


class LatentStore:
    def __init__(self, path: Path, manifest: dict, fmt: str, writable: bool = False):
        self.path, self.manifest, self.format = path, manifest, fmt
        container = zarr_store.ZarrStore if fmt == "zarr" else wds_store.WdsStore
        self._container = container(path, mode="r+" if writable else "r")

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def split(self, name: str) -> SplitData:
        if name not in self.manifest["splits"]:
            raise StoreError(f"{self.path}: no split {name!r}; the store has {self.splits}")
        return self._container.split(name)

    def set_manifest(self, manifest: dict) -> None:
        self._container.set_manifest(manifest)
        self.manifest = manifest


def open_store(path: str | Path, require_complete: bool = True, writable: bool = False) -> LatentStore:
    """Open a store; by default refuse one whose encode has not finished (it would give short epochs)."""
    path = Path(path)
    fmt = store_format(path)
    manifest = read_manifest(path)
    if require_complete and not manifest.get("complete"):
        raise StoreError(
            f"{path}: encode has not finished (manifest.complete is false); run the same "
            "`engine encode` command again to resume it, or wait for the process writing it"
        )
    return LatentStore(path, manifest, fmt, writable=writable)
