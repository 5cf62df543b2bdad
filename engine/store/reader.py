"""Open a latent store of either container behind one interface, checked before it is used."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from engine.store import wds_store, zarr_store
from engine.store.integrity import quick_check, summarise
from engine.store.manifest import StoreError, read_manifest, store_format


class SplitData(Protocol):
    """One split: metadata arrays in full, latents by row range (blocks read whole)."""

    name: str
    has_logvar: bool

    @property
    def size(self) -> int: ...
    @property
    def block(self) -> int: ...
    @property
    def n_blocks(self) -> int: ...
    @property
    def latent_shape(self) -> tuple[int, ...]: ...
    def meta(self, key: str) -> np.ndarray:
        """``keys``, ``labels``, ``folds``, ``groups`` or ``valid``, all rows."""

    def read(self, key: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of ``latents``, ``logvar`` or ``valid``."""

    def done_flags(self) -> np.ndarray: ...
    def block_moments(self) -> np.ndarray: ...
    def block_checksum(self, b: int) -> int: ...
    def read_block_arrays(self, b: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(latents, logvar or None, valid) of block ``b``, as its checksum covers them."""

    def block_file(self, b: int) -> Path: ...
    def blocks_in_file(self, rel: str) -> list[int]: ...
    def data_files(self) -> dict[str, list[Path]]: ...
    def write_row_field(self, key: str, values: np.ndarray) -> list[Path]: ...


class LatentStore:
    def __init__(self, path: Path, manifest: dict, fmt: str, writable: bool = False):
        self.path, self.manifest, self.format = path, manifest, fmt
        self._container = zarr_store.ZarrStore(path, writable) if fmt == "zarr" else wds_store.WdsStore(path)

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


def open_store(
    path: str | Path, require_complete: bool = True, writable: bool = False, check: bool | None = None
) -> LatentStore:
    """Open a store; by default refuse one whose encode has not finished (it would give short epochs).

    ``check`` (default: when completeness is required) runs the quick integrity check, so a missing or
    truncated file is refused here, before any step, and never read back as zeros.
    """
    path = Path(path)
    fmt = store_format(path)
    manifest = read_manifest(path)
    if require_complete and not manifest.get("complete"):
        raise StoreError(
            f"{path}: encode has not finished (manifest.complete is false); run the same "
            "`engine encode` command again to resume it, or wait for the process writing it"
        )
    store = LatentStore(path, manifest, fmt, writable=writable)
    if (require_complete if check is None else check) and (problems := quick_check(store)):
        raise StoreError(
            "; ".join(summarise(problems)[:3])
            + (
                f" (and {len(problems) - 3} more problems; `engine inspect {path}` lists them)"
                if len(problems) > 3
                else ""
            )
        )
    return store
