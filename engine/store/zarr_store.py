"""The zarr v3 container: one group per split with sharded chunk arrays.

Layout per split: ``latents`` (N, C, h, w) float16 [+ ``logvar``], ``labels``, ``folds``,
``keys``, ``groups``, ``valid`` (0 where an unreadable image was skipped), and the completion
record: ``done`` (one flag per block) and ``moments`` (per-block channel statistics).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.store.manifest import StoreError
from engine.store.atomic_create import create_by_rename
from engine.store.plan import SplitPlan
from engine.store.split_content import SplitContent


def create(path: Path, manifest: dict, splits: dict[str, tuple[SplitPlan, SplitContent]],
           latent_shape: tuple[int, int, int], has_logvar: bool) -> bool:
    """Build the empty store beside ``path`` and rename it into place; False if another worker won."""
    import zarr  # imported on use: device-side runs (bench, resident training) work without zarr installed

    def build(tmp: Path) -> None:
        root = zarr.open_group(tmp, mode="w-")
        for name, (plan, content) in splits.items():
            g = root.create_group(name)
            n, c = plan.size, latent_shape[0]
            shape, chunk = (n, *latent_shape), (plan.block, *latent_shape)
            shard = (plan.block * plan.blocks_per_shard, *latent_shape)
            # uncompressed: zstd saves ~8 % on latents and caps reads at ~60k samples per CPU-second
            g.create_array("latents", shape=shape, chunks=chunk, shards=shard, dtype="float16", compressors=None)
            if has_logvar:
                g.create_array("logvar", shape=shape, chunks=chunk, shards=shard, dtype="float16", compressors=None)
            g.create_array("valid", shape=(n,), chunks=(plan.block,), dtype="uint8", fill_value=0)
            g.create_array("done", shape=(plan.n_blocks,), chunks=(1,), dtype="uint8", fill_value=0)
            g.create_array("moments", shape=(plan.n_blocks, c, 3), chunks=(1, c, 3), dtype="float64")
            for key in ("labels", "folds", "keys", "groups"):
                value = getattr(content, key)
                arr = g.create_array(key, shape=value.shape, chunks=value.shape or (1,),
                                     dtype=str if value.dtype.kind == "U" else value.dtype)
                arr[...] = value
        root.attrs["manifest"] = manifest

    return create_by_rename(path, build)


class ZarrSplit:
    """One split of a zarr store, for reading and for the encoder's block writes."""

    def __init__(self, group: zarr.Group, name: str, path: Path):
        self.group, self.name, self.path = group, name, path
        self._arrays: dict[str, zarr.Array] = {}

    def _array(self, key: str) -> zarr.Array:
        """The array ``key``, opened once (opening re-reads its metadata)."""
        if key not in self._arrays:
            if key not in self.group:
                raise StoreError(f"{self.path}: split {self.name!r} has no `{key}` array")
            self._arrays[key] = self.group[key]
        return self._arrays[key]

    @property
    def has_logvar(self) -> bool:
        return "logvar" in self.group

    @property
    def size(self) -> int:
        return int(self._array("labels").shape[0])

    @property
    def block(self) -> int:
        return int(self._array("latents").chunks[0])

    def meta(self, key: str) -> np.ndarray:
        return np.asarray(self._array(key)[...])

    def block_done(self, b: int) -> bool:
        return bool(self._array("done")[b])

    def write_block(self, b: int, latents: np.ndarray, logvar: np.ndarray | None, valid: np.ndarray,
                    moments: np.ndarray) -> None:
        """Data first, completion flag last: a kill in between leaves the block to be redone."""
        lo = b * self.block
        self._array("latents")[lo:lo + len(latents)] = latents
        if logvar is not None:
            self._array("logvar")[lo:lo + len(logvar)] = logvar
        self._array("valid")[lo:lo + len(valid)] = valid
        self._array("moments")[b] = moments
        self._array("done")[b] = 1

    def done_flags(self) -> np.ndarray:
        return np.asarray(self._array("done")[...])

    def write_row_field(self, key: str, values: np.ndarray) -> None:
        """A per-row array added after encoding (teacher logits), replacing an older one."""
        self._arrays.pop(key, None)
        arr = self.group.create_array(key, shape=values.shape, chunks=values.shape, dtype=values.dtype, overwrite=True)
        arr[...] = values

    def block_moments(self) -> np.ndarray:
        return np.asarray(self._array("moments")[...])

    def read(self, key: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of an array (``latents``, ``logvar``, ``valid``, ...)."""
        return np.asarray(self._array(key)[lo:hi])


class ZarrStore:
    def __init__(self, path: Path, mode: str = "r"):
        import zarr

        self.path = path
        self.root = zarr.open_group(path, mode=mode)

    def split(self, name: str) -> ZarrSplit:
        if name not in self.root:
            raise StoreError(f"{self.path}: no split {name!r}; it has {sorted(self.root.group_keys())}")
        return ZarrSplit(self.root[name], name, self.path)

    def set_manifest(self, manifest: dict) -> None:
        self.root.attrs["manifest"] = manifest
