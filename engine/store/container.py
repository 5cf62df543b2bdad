"""What a store container is: the one interface the zarr and webdataset containers implement.

Everything else (the manifest's schema, integrity, the encoder, the loaders) works on the split interface
(``SplitData``) and never asks which container it has. What differs lives here: the name users give
(``--format``), the default store path, the file that marks a store at its root, how an empty store is
built and its manifest read, how an existing one is opened, and whether DALI's webdataset reader can read
its splits itself. A container object holds no state, so it pickles into DALI's worker processes.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.store.atomic import create_by_rename
from engine.store.manifest import StoreError, check_manifest
from engine.store.plan import SplitContent, SplitPlan


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

    def read_selected(self, key: str, b: int, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` (offsets within the block) of ``latents`` or ``logvar`` in block ``b``, the block read whole:
        the loaders' read, the fastest the container allows."""

    def block_done(self, b: int) -> bool: ...
    def write_block(
        self, b: int, latents: np.ndarray, logvar: np.ndarray | None, valid: np.ndarray, moments: np.ndarray
    ) -> None: ...
    def done_flags(self) -> np.ndarray: ...
    def block_moments(self) -> np.ndarray: ...
    def block_checksum(self, b: int) -> int: ...
    def read_block_arrays(self, b: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(latents, logvar or None, valid) of block ``b``, as its checksum covers them."""

    def block_file(self, b: int) -> Path: ...
    def blocks_in_file(self, rel: str) -> list[int]: ...
    def data_files(self) -> dict[str, list[Path]]: ...
    def write_row_field(self, key: str, values: np.ndarray) -> list[Path]: ...
    def layout_problems(self, plan: SplitPlan) -> list[str]:
        """One line per array whose rows or blocks disagree with ``plan`` (the manifest's record of the split)."""

    def remove_temporary(self, blocks: list[int]) -> None:
        """Delete what failed or killed writes of ``blocks`` left behind (before those blocks are written again)."""


class OpenContainer(Protocol):
    """A store opened in one container: its splits, and where its manifest is written."""

    def split(self, name: str) -> SplitData: ...
    def set_manifest(self, manifest: dict) -> None: ...


class Container(ABC):
    name: str  # the --format value, recorded as the manifest's ``format``
    default_path: Path  # where `engine encode` writes without --out
    marker: str  # the file at a store's root that says it is one of this container's, and holds its manifest
    webdataset_shards: bool  # its splits are tar shards with index files that DALI's webdataset reader reads itself
    member_overhead: int  # bytes a stored array of a row costs beyond its data (headers, padding): for space estimates

    def row_bytes(self, latent_bytes: int, arrays: int) -> int:
        """About what one row costs on disk: ``arrays`` latent-sized arrays (latents, logvar) and its label."""
        return arrays * (latent_bytes + self.member_overhead) + self.member_overhead

    def create(
        self,
        path: Path,
        manifest: dict,
        splits: dict[str, tuple[SplitPlan, SplitContent]],
        latent_shape: tuple[int, int, int],
        has_logvar: bool,
    ) -> bool:
        """Build the empty store beside ``path`` and rename it into place; False if another worker won."""
        return create_by_rename(path, lambda tmp: self.build(tmp, manifest, splits, latent_shape, has_logvar))

    @abstractmethod
    def build(
        self,
        path: Path,
        manifest: dict,
        splits: dict[str, tuple[SplitPlan, SplitContent]],
        latent_shape: tuple[int, int, int],
        has_logvar: bool,
    ) -> None:
        """Write an empty store at ``path`` (a fresh temporary directory): metadata, no latent yet."""

    @abstractmethod
    def open(self, path: Path, writable: bool = False) -> OpenContainer: ...

    @abstractmethod
    def manifest_in(self, meta: dict) -> dict | None:
        """The manifest inside the parsed marker file; None when the file has none."""

    def holds(self, path: Path) -> bool:
        """Whether ``path`` is a store of this container."""
        return (path / self.marker).is_file()

    def read_manifest(self, path: Path) -> dict:
        """The manifest of the store at ``path``, checked for a schema version this engine reads and its fields."""
        file = path / self.marker
        try:
            meta = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise StoreError(
                f"{file}: unreadable ({err}); the store's manifest is damaged, re-encode the store"
            ) from None
        manifest = self.manifest_in(meta)
        if manifest is None:
            raise StoreError(f"{file}: no `manifest` in it; the store was not written by `engine encode`")
        return check_manifest(path, file, manifest)
