"""The zarr v3 container: one group per split with sharded chunk arrays.

Layout per split: ``latents`` (N, C, h, w) float16 [+ ``logvar``], ``labels``, ``folds``,
``keys``, ``groups``, ``valid`` (0 where an unreadable image was skipped), and the completion
record: ``done`` (one flag per block), ``checksum`` (per block, of its decoded arrays) and
``moments`` (per-block channel statistics). Reads that fail name the file they failed on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.store.container import Container
from engine.store.integrity import block_checksum, digest
from engine.store.manifest import StoreError
from engine.store.plan import SplitContent, SplitPlan

if TYPE_CHECKING:
    import zarr


BLOCK_INDEXED = ("done", "checksum", "moments")  # one entry per block; the others have one per row
DERIVED_RECORD = ("_done", "_checksum")  # suffixes of a derived array's completion record, one entry per block
DAMAGED = "re-encode the store with --overwrite or restore it from a copy"


class ZarrSplit:
    """One split of a zarr store, for reading and for the encoder's block writes."""

    def __init__(self, group: zarr.Group, name: str, path: Path):
        self.group, self.name, self.path = group, name, path
        self._arrays: dict[str, zarr.Array] = {}

    def _array(self, key: str) -> zarr.Array:
        """The array ``key``, opened once (opening re-reads its metadata).

        Chunks equal to the fill value are written too (zarr skips them by default), so in a finished
        block every chunk has its file, and a missing file is damage, never an all-zero chunk.
        """
        if key not in self._arrays:
            if key not in self.group:
                raise StoreError(f"{self.path}: split {self.name!r} has no `{key}` array")
            self._arrays[key] = self.group[key].with_config({"write_empty_chunks": True})
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

    @property
    def n_blocks(self) -> int:
        return int(self._array("done").shape[0])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self._array("latents").shape[1:])

    def meta(self, key: str) -> np.ndarray:
        return self.read(key)

    def block_done(self, b: int) -> bool:
        return bool(self._array("done")[b])

    def write_block(
        self, b: int, latents: np.ndarray, logvar: np.ndarray | None, valid: np.ndarray, moments: np.ndarray
    ) -> None:
        """Data first, checksum, completion flag last: a kill in between leaves the block to be redone."""
        lo = b * self.block
        self._array("latents")[lo : lo + len(latents)] = latents
        if logvar is not None:
            self._array("logvar")[lo : lo + len(logvar)] = logvar
        self._array("valid")[lo : lo + len(valid)] = valid
        self._array("moments")[b] = moments
        self._array("checksum")[b] = block_checksum(latents, logvar, valid)
        self._array("done")[b] = 1

    def done_flags(self) -> np.ndarray:
        return self.read("done")

    def block_checksum(self, b: int) -> int:
        return int(self.read("checksum", b, b + 1)[0])

    def write_row_field(self, key: str, values: np.ndarray) -> list[Path]:
        """A per-row array added after encoding (teacher logits), replacing an older one; returns its files."""
        self._arrays.pop(key, None)
        arr = self.group.create_array(
            key,
            shape=values.shape,
            chunks=values.shape,
            dtype=values.dtype,
            overwrite=True,
            config={"write_empty_chunks": True},
        )
        arr[...] = values
        return self.data_files()[key]

    def block_moments(self) -> np.ndarray:
        return self.read("moments")

    # arrays derived from the stored latents after encoding (reconstructions), written block by block like them

    def derived_done(self, name: str) -> np.ndarray:
        """One flag per block of the derived array ``name``: all 0 before it exists."""
        return self.read(f"{name}_done") if f"{name}_done" in self.group else np.zeros(self.n_blocks, np.uint8)

    def write_derived_block(self, name: str, b: int, values: np.ndarray) -> None:
        """Rows of block ``b``, then their checksum, then the block's flag (a kill in between redoes the block)."""
        if name not in self.group:
            config = {"write_empty_chunks": True}
            self.group.create_array(
                name,
                shape=(self.size, *values.shape[1:]),
                chunks=(self.block, *values.shape[1:]),
                dtype=values.dtype,
                config=config,
            )
            for suffix, dtype in zip(DERIVED_RECORD, ("uint8", "uint64")):
                self.group.create_array(
                    name + suffix, shape=(self.n_blocks,), chunks=(1,), dtype=dtype, fill_value=0, config=config
                )
        lo = b * self.block
        self._array(name)[lo : lo + len(values)] = values
        self._array(f"{name}_checksum")[b] = digest(values)
        self._array(f"{name}_done")[b] = 1

    def derived_checksum(self, name: str, b: int) -> int:
        return int(self.read(f"{name}_checksum", b, b + 1)[0])

    def read_derived(self, name: str, lo: int, hi: int) -> np.ndarray:
        return self.read_written(name, lo, hi)

    def read(self, key: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of an array (``latents``, ``logvar``, ``valid``, ...)."""
        array = self._array(key)
        try:
            return np.asarray(array[lo:hi])
        except Exception as err:  # noqa: BLE001 - zarr and numcodecs raise many kinds; all mean a damaged file
            raise StoreError(
                f"{self._file_of_rows(key, lo)}: unreadable ({type(err).__name__}: {err}); the store is "
                "damaged, re-encode it with --overwrite or restore it from a copy"
            ) from None

    def read_written(self, key: str, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of finished blocks: a missing file is an error, never zarr's fill value."""
        array = self._array(key)
        per_file = (array.shards or array.chunks)[0]
        for row in range(lo - lo % per_file, hi, per_file):
            if not (path := self._file_of_rows(key, row)).is_file():
                raise StoreError(
                    f"{path}: missing (split {self.name}, array {key}, rows {row}-"
                    f"{min(row + per_file, self.size) - 1}); the store is damaged, re-encode it with "
                    "--overwrite or restore it from a copy"
                )
        return self.read(key, lo, hi)

    def read_selected(self, key: str, b: int, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` of block ``b``: the block's contiguous rows read whole (errors name the shard file)."""
        lo = b * self.block
        block = self.read_written(key, lo, min(lo + self.block, self.size))
        return block if len(local) == len(block) else block[local]

    def read_block_arrays(self, b: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        lo, hi = b * self.block, min((b + 1) * self.block, self.size)
        return (
            self.read_written("latents", lo, hi),
            self.read_written("logvar", lo, hi) if self.has_logvar else None,
            self.read_written("valid", lo, hi),
        )

    def _file_of_rows(self, key: str, row: int) -> Path:
        array = self._array(key)
        per_file = (array.shards or array.chunks)[0] if array.ndim else 1
        coords = (row // per_file, *([0] * (array.ndim - 1))) if array.ndim else ()
        return self.path / self.name / key / array.metadata.encode_chunk_key(coords)

    def block_file(self, b: int) -> Path:
        """The file holding block ``b``'s latents (a shard holds several blocks)."""
        return self._file_of_rows("latents", b * self.block)

    def blocks_in_file(self, rel: str) -> list[int]:
        """Blocks whose data a file (path relative to the store) holds; [] for metadata and whole-split arrays."""
        parts = Path(rel).parts
        if len(parts) < 4 or parts[2] != "c" or parts[1] not in self.group:
            return []
        array = self._array(parts[1])
        first = int(parts[3])
        if parts[1] in BLOCK_INDEXED or parts[1].endswith(DERIVED_RECORD):
            return [first]
        if array.chunks[0] != self.block:
            return []  # whole-split arrays (metadata, row fields) are one chunk of every row
        per_file = (array.shards or array.chunks)[0] // self.block
        return list(range(first * per_file, min((first + 1) * per_file, self.n_blocks)))

    def layout_problems(self, plan: SplitPlan) -> list[str]:
        """Arrays whose rows or blocks disagree with the manifest's plan of the split (their zarr.json edited):
        found here, before a read past the rows the manifest promises."""
        problems = []
        for key in sorted(self.group.array_keys()):
            array = self._array(key)
            rows = plan.n_blocks if key in BLOCK_INDEXED or key.endswith(DERIVED_RECORD) else plan.size
            if array.shape[:1] != (rows,):
                problems.append(
                    f"{self.path / self.name / key / 'zarr.json'}: shape {list(array.shape)}, the manifest records "
                    f"{rows} {'blocks' if rows == plan.n_blocks and rows != plan.size else 'rows'} (split "
                    f"{self.name}); the array's metadata was edited: {DAMAGED}"
                )
        if (chunk := self._array("latents").chunks[0]) != plan.block:
            problems.append(
                f"{self.path / self.name / 'latents' / 'zarr.json'}: blocks of {chunk} rows, the manifest records "
                f"{plan.block} (split {self.name}); the array's metadata was edited: {DAMAGED}"
            )
        return problems

    def remove_temporary(self, blocks: list[int]) -> None:
        """zarr writes each chunk or shard file through a ``NAME.<uuid>.partial`` sibling: those of ``blocks``' files
        (a kill mid-write leaves one; a worker owns its blocks' files, so no other writer's are touched)."""
        for b in blocks:
            for key in ("latents", "logvar", "valid", *BLOCK_INDEXED):
                if key in self.group:
                    file = self._file_of_rows(key, b if key in BLOCK_INDEXED else b * self.block)
                    for partial in file.parent.glob(f"{file.name}.*.partial"):
                        partial.unlink(missing_ok=True)

    def data_files(self) -> dict[str, list[Path]]:
        """Every file of every array of the split, by array name."""
        return {
            key: sorted(p for p in (self.path / self.name / key).rglob("*") if p.is_file())
            for key in sorted(self.group.array_keys())
        }


class ZarrStore:
    def __init__(self, path: Path, writable: bool = False):
        import zarr

        self.path = path
        self.root = zarr.open_group(path, mode="r+" if writable else "r")

    def split(self, name: str) -> ZarrSplit:
        if name not in self.root:
            raise StoreError(f"{self.path}: no split {name!r}; it has {sorted(self.root.group_keys())}")
        return ZarrSplit(self.root[name], name, self.path)

    def set_manifest(self, manifest: dict) -> None:
        self.root.attrs["manifest"] = manifest


class ZarrFormat(Container):
    name = "zarr"
    default_path = Path("latents.zarr")
    marker = "zarr.json"
    webdataset_shards = False
    member_overhead = 0  # rows are contiguous in uncompressed chunks

    def build(
        self,
        path: Path,
        manifest: dict,
        splits: dict[str, tuple[SplitPlan, SplitContent]],
        latent_shape: tuple[int, int, int],
        has_logvar: bool,
    ) -> None:
        import zarr  # imported on use: device-side runs (bench, resident training) work without zarr installed

        root = zarr.open_group(path, mode="w-")
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
            g.create_array("checksum", shape=(plan.n_blocks,), chunks=(1,), dtype="uint64", fill_value=0)
            g.create_array("moments", shape=(plan.n_blocks, c, 3), chunks=(1, c, 3), dtype="float64")
            for key in ("labels", "folds", "keys", "groups"):
                value = getattr(content, key)
                arr = g.create_array(
                    key,
                    shape=value.shape,
                    chunks=value.shape or (1,),
                    dtype=str if value.dtype.kind == "U" else value.dtype,
                    config={"write_empty_chunks": True},
                )
                arr[...] = value
        root.attrs["manifest"] = manifest

    def open(self, path: Path, writable: bool = False) -> ZarrStore:
        return ZarrStore(path, writable)

    def manifest_in(self, meta: dict) -> dict | None:
        return meta.get("attributes", {}).get("manifest")
