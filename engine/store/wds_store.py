"""The webdataset container: tar shards per split, one block per shard, with DALI index files.

Per split: ``meta.npz`` (keys, labels, folds, groups), ``shard-NNNNNN.tar`` holding one sample
per valid row (``<index>.latent.npy``, ``<index>.label.npy`` [+ ``<index>.logvar.npy``]),
``shard-NNNNNN.idx`` in the v1.2 format of DALI's ``fn.readers.webdataset``, and
``shard-NNNNNN.block.npz`` (valid flags, channel moments, checksum of the decoded block), written
last as the completion record. Labels are ``.npy``, not ``.cls``: DALI returns ``.cls`` as ASCII bytes.
A shard that is missing, truncated or lacks a member of a valid row is an error naming the file.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from engine.store.container import Container
from engine.store.integrity import block_checksum, digest
from engine.store.manifest import StoreError, write_json_atomic
from engine.store.plan import SplitContent, SplitPlan

MANIFEST_JSON = "manifest.json"
DAMAGED = "the store is damaged, re-encode it with --overwrite or restore it from a copy"


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


class WdsSplit:
    """One split of a webdataset store, for reading and for the encoder's shard writes."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path / name, name
        if not (self.path / "meta.npz").is_file():
            raise StoreError(f"{path}: no split {name!r} (missing {name}/meta.npz)")
        try:
            with np.load(self.path / "meta.npz", allow_pickle=False) as meta:
                self._meta = {k: meta[k] for k in meta.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise StoreError(f"{self.path / 'meta.npz'}: unreadable ({err}); {DAMAGED}") from None
        self.block = int(self._meta["block"])
        self.n_blocks = int(self._meta["n_blocks"])
        self.has_logvar = bool(self._meta["has_logvar"])
        self.latent_shape = tuple(int(v) for v in self._meta["latent_shape"])

    @property
    def size(self) -> int:
        return int(len(self._meta["keys"]))

    def meta(self, key: str) -> np.ndarray:
        if key == "valid":
            return self.read("valid")
        if key in self._meta:
            return self._meta[key]
        extra = self.path / f"{key}.npy"  # per-row arrays added after encoding (teacher logits)
        if extra.is_file():
            try:
                return np.load(extra)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise StoreError(f"{extra}: unreadable ({err}); {DAMAGED}") from None
        raise StoreError(f"{self.path}: split {self.name!r} has no `{key}`")

    def write_row_field(self, key: str, values: np.ndarray) -> list[Path]:
        """A per-row array added after encoding (teacher logits), beside meta.npz, written atomically."""
        tmp = self.path / f".{key}.tmp.npy"
        np.save(tmp, values)
        os.replace(tmp, self.path / f"{key}.npy")
        return [self.path / f"{key}.npy"]

    def shard(self, b: int, ext: str) -> Path:
        return self.path / f"shard-{b:06d}.{ext}"

    def shards(self) -> list[tuple[Path, Path]]:
        """(tar, idx) paths of every block, in block order, for DALI's webdataset reader."""
        return [(self.shard(b, "tar"), self.shard(b, "idx")) for b in range(self.n_blocks)]

    def block_done(self, b: int) -> bool:
        return self.shard(b, "block.npz").is_file()

    def write_block(
        self, b: int, latents: np.ndarray, logvar: np.ndarray | None, valid: np.ndarray, moments: np.ndarray
    ) -> None:
        """Tar and index through temporary names, the completion record last."""
        try:
            self._write_block(b, latents, logvar, valid, moments)
        except BaseException:
            self.remove_temporary([b])  # a full disk or an interrupt leaves the last whole state, no partial file
            raise

    def _write_block(
        self, b: int, latents: np.ndarray, logvar: np.ndarray | None, valid: np.ndarray, moments: np.ndarray
    ) -> None:
        lo = b * self.block
        labels = self._meta["labels"]
        tmp_tar, lines = self.shard(b, "tar.tmp"), []
        with tarfile.open(tmp_tar, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in np.flatnonzero(valid):
                parts = {"latent": latents[i], "label": labels[lo + i]}
                if logvar is not None:
                    parts["logvar"] = logvar[i]
                entry = []
                for ext, value in parts.items():
                    data = _npy_bytes(np.asarray(value))
                    info = tarfile.TarInfo(f"{lo + i:09d}.{ext}.npy")
                    info.size, info.mode = len(data), 0o444
                    data_offset = tar.offset + tarfile.BLOCKSIZE  # a USTAR header is one block
                    tar.addfile(info, io.BytesIO(data))
                    entry.append(f"{ext}.npy {data_offset} {len(data)} {info.name}")
                lines.append(" ".join(entry))
        os.replace(tmp_tar, self.shard(b, "tar"))
        tmp_idx = self.shard(b, "idx.tmp")
        tmp_idx.write_text(f"v1.2 {len(lines)}\n" + "".join(f"{line}\n" for line in lines))
        os.replace(tmp_idx, self.shard(b, "idx"))
        tmp_rec = self.shard(b, "block.tmp.npz")
        np.savez(
            tmp_rec,
            valid=valid.astype(np.uint8),
            moments=moments,
            checksum=np.uint64(block_checksum(latents, logvar, valid)),
        )
        os.replace(tmp_rec, self.shard(b, "block.npz"))

    def remove_temporary(self, blocks: list[int]) -> None:
        """The temporary files of ``blocks``' writes that a failed or killed write left behind."""
        for b in blocks:
            for ext in ("tar.tmp", "idx.tmp", "block.tmp.npz"):
                self.shard(b, ext).unlink(missing_ok=True)

    def layout_problems(self, plan: SplitPlan) -> list[str]:
        """Metadata (meta.npz) that disagrees with the manifest's plan of the split: edited, or another store's."""
        found = {"rows": self.size, "block": self.block, "n_blocks": self.n_blocks}
        found |= {f"{key} rows": len(self._meta[key]) for key in ("labels", "folds", "groups")}
        want = {"rows": plan.size, "block": plan.block, "n_blocks": plan.n_blocks}
        want |= {f"{key} rows": plan.size for key in ("labels", "folds", "groups")}
        return [
            f"{self.path / 'meta.npz'}: {field} {found[field]}, the manifest records {want[field]} (split "
            f"{self.name}); the split's metadata was edited: {DAMAGED}"
            for field in want
            if found[field] != want[field]
        ]

    def _record(self, b: int) -> dict:
        if not self.block_done(b):
            raise StoreError(f"{self.path}: shard {b} is not encoded yet; run the same `engine encode` again to finish")
        try:
            with np.load(self.shard(b, "block.npz")) as rec:
                return {k: rec[k] for k in rec.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise StoreError(f"{self.shard(b, 'block.npz')}: unreadable ({err}); {DAMAGED}") from None

    def block_checksum(self, b: int) -> int:
        return int(self._record(b)["checksum"])

    # arrays derived from the stored latents after encoding (reconstructions): one .npz per block, written atomically

    def derived_done(self, name: str) -> np.ndarray:
        return np.array([self.shard(b, f"{name}.npz").is_file() for b in range(self.n_blocks)], dtype=np.uint8)

    def write_derived_block(self, name: str, b: int, values: np.ndarray) -> None:
        tmp = self.shard(b, f"{name}.tmp.npz")
        np.savez(tmp, values=values, checksum=np.uint64(digest(values)))
        os.replace(tmp, self.shard(b, f"{name}.npz"))

    def _derived(self, name: str, b: int) -> dict:
        path = self.shard(b, f"{name}.npz")
        try:
            with np.load(path) as rec:
                return {k: rec[k] for k in rec.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise StoreError(f"{path}: unreadable ({err}); {DAMAGED}") from None

    def derived_checksum(self, name: str, b: int) -> int:
        return int(self._derived(name, b)["checksum"])

    def read_derived(self, name: str, lo: int, hi: int) -> np.ndarray:
        blocks = range(lo // self.block, (hi - 1) // self.block + 1)
        rows = np.concatenate([self._derived(name, b)["values"] for b in blocks])
        return rows[lo - blocks[0] * self.block : hi - blocks[0] * self.block]

    def done_flags(self) -> np.ndarray:
        return np.array([self.block_done(b) for b in range(self.n_blocks)], dtype=np.uint8)

    def block_moments(self) -> np.ndarray:
        return np.stack([self._record(b)["moments"] for b in range(self.n_blocks)])

    def read_block(self, b: int, key: str) -> np.ndarray:
        """One block's rows of ``latents``/``logvar``/``valid``; skipped rows of latents are zeros."""
        lo, hi = b * self.block, min((b + 1) * self.block, self.size)
        valid = self._record(b)["valid"]
        if key == "valid":
            return valid
        ext = {"latents": "latent", "logvar": "logvar"}[key]
        out = np.zeros((hi - lo, *self.latent_shape), dtype=np.float16)
        tar, found = self.shard(b, "tar"), np.zeros(hi - lo, dtype=bool)
        try:
            index = self.shard(b, "idx").read_text().split("\n")[1:]
            raw = tar.read_bytes()
        except OSError as err:
            raise StoreError(f"{err.filename}: unreadable ({err.strerror}); {DAMAGED}") from None
        for line in filter(None, index):
            fields = line.split()
            for j in range(0, len(fields), 4):
                if fields[j] == f"{ext}.npy":
                    offset, size, name = int(fields[j + 1]), int(fields[j + 2]), fields[j + 3]
                    if offset + size > len(raw):
                        raise StoreError(
                            f"{tar}: truncated ({len(raw)} bytes; member {name} ends at byte "
                            f"{offset + size}); {DAMAGED}"
                        )
                    row = int(name.split(".")[0]) - lo
                    try:
                        out[row] = np.load(io.BytesIO(raw[offset : offset + size]))
                    except (ValueError, EOFError) as err:
                        raise StoreError(
                            f"{tar}: member {name} is not a {self.latent_shape} array ({err}); {DAMAGED}"
                        ) from None
                    found[row] = True
        if (missing := np.flatnonzero(valid.astype(bool) & ~found)).size:
            raise StoreError(
                f"{tar}: no {ext}.npy for rows {(lo + missing[:3]).tolist()} (valid in the block record); {DAMAGED}"
            )
        return out

    def read_selected(self, key: str, b: int, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` of block ``b`` straight from the shard's bytes through its index, with no tar parsing."""
        lo = b * self.block
        ext = {"latents": "latent.npy", "logvar": "logvar.npy"}[key]
        tar, members = self.shard(b, "tar"), {}
        try:
            for line in self.shard(b, "idx").read_text().splitlines()[1:]:
                fields = line.split()
                for j in range(0, len(fields), 4):
                    if fields[j] == ext:
                        members[int(fields[j + 3].split(".", 1)[0]) - lo] = (int(fields[j + 1]), int(fields[j + 2]))
            raw = np.fromfile(tar, dtype=np.uint8)
        except (OSError, ValueError, IndexError) as err:
            raise StoreError(
                f"{tar}: unreadable shard or index ({err}); the store is damaged, re-encode it with --overwrite"
            ) from None
        count = int(np.prod(self.latent_shape))
        out = np.empty((len(local), *self.latent_shape), dtype=np.float16)
        for i, row in enumerate(local.tolist()):
            if row not in members:
                raise StoreError(
                    f"{tar}: no {ext} for row {lo + row}; the shard is incomplete, re-encode the store with --overwrite"
                )
            offset, size = members[row]
            if offset + size > len(raw) or size < 2 * count:
                raise StoreError(
                    f"{tar}: truncated ({len(raw)} bytes, row {lo + row} needs bytes {offset}-"
                    f"{offset + size}); the store is damaged, re-encode it with --overwrite"
                )
            # the array's bytes end the .npy member; its header length does not matter
            out[i] = np.frombuffer(raw, np.float16, count, offset + size - 2 * count).reshape(self.latent_shape)
        return out

    def read_block_arrays(self, b: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        return (
            self.read_block(b, "latents"),
            self.read_block(b, "logvar") if self.has_logvar else None,
            self.read_block(b, "valid"),
        )

    def block_file(self, b: int) -> Path:
        return self.shard(b, "tar")

    def blocks_in_file(self, rel: str) -> list[int]:
        name = Path(rel).name
        return [int(name[6:12])] if name.startswith("shard-") else []

    def data_files(self) -> dict[str, list[Path]]:
        """The split's files by what they hold: metadata, shards, their indices, block records, row fields."""
        files = {
            "meta": [self.path / "meta.npz"],
            "shards": [self.shard(b, "tar") for b in range(self.n_blocks)],
            "index": [self.shard(b, "idx") for b in range(self.n_blocks)],
            "blocks": [self.shard(b, "block.npz") for b in range(self.n_blocks)],
        }
        files |= {p.stem: [p] for p in sorted(self.path.glob("*.npy"))}
        for p in sorted(self.path.glob("shard-*.*.npz")):
            if (derived := p.name.split(".")[1]) != "block":
                files.setdefault(derived, []).append(p)
        return files

    def read(self, key: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        hi = self.size if hi is None else hi
        if hi <= lo:
            return self.read_block(0, key)[:0]
        blocks = range(lo // self.block, (hi - 1) // self.block + 1)
        rows = np.concatenate([self.read_block(b, key) for b in blocks])
        start = blocks[0] * self.block
        return rows[lo - start : hi - start]


class WdsStore:
    """Plain files: any split is writable by whoever may write the directory."""

    def __init__(self, path: Path):
        self.path = path

    def split(self, name: str) -> WdsSplit:
        return WdsSplit(self.path, name)

    def set_manifest(self, manifest: dict) -> None:
        write_json_atomic(self.path / MANIFEST_JSON, manifest)


class WdsFormat(Container):
    name = "wds"
    default_path = Path("latents_wds")
    marker = MANIFEST_JSON
    webdataset_shards = True
    member_overhead = 1024  # a 512-byte tar header, the .npy header, padding to 512 bytes

    def build(
        self,
        path: Path,
        manifest: dict,
        splits: dict[str, tuple[SplitPlan, SplitContent]],
        latent_shape: tuple[int, int, int],
        has_logvar: bool,
    ) -> None:
        path.mkdir(parents=True)
        for name, (plan, content) in splits.items():
            (path / name).mkdir()
            np.savez(
                path / name / "meta.npz",
                keys=content.keys,
                labels=content.labels,
                folds=content.folds,
                groups=content.groups,
                block=np.int64(plan.block),
                n_blocks=np.int64(plan.n_blocks),
                has_logvar=np.bool_(has_logvar),
                latent_shape=np.asarray(latent_shape, dtype=np.int64),
            )
        write_json_atomic(path / MANIFEST_JSON, manifest)

    def open(self, path: Path, writable: bool = False) -> WdsStore:
        return WdsStore(path)

    def manifest_in(self, meta: dict) -> dict | None:
        return meta
