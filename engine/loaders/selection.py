"""Which samples a run reads: one stored split, or a cross-validation role pooled over all splits.

A selection numbers its samples 0..size-1 in (split, row) order and groups them by store block
("chunk": one zarr chunk or one webdataset shard), so readers can fetch whole chunks and the
order can shuffle chunk by chunk. Rows marked invalid (skipped unreadable images) never enter it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from engine.errors import UsageError
from engine.store import LatentStore, StoreError
from engine.store.manifest import fingerprint

ROLES = ("train", "val", "test")
TEACHER = "teacher_logits"  # the default name of stored teacher logits (`engine encode --teacher`)
FEATURES = "_features"  # the teacher's pooled features are stored beside its logits under NAME + this


@dataclass(frozen=True, eq=False)
class Selection:
    role: str
    fold: int | None
    splits: tuple[str, ...]
    split_of: np.ndarray  # (N,) index into ``splits``
    rows: np.ndarray  # (N,) row within its split
    keys: np.ndarray  # (N,) sample keys
    row_fields: dict[str, np.ndarray]  # "labels"; "teacher_logits" / "teacher_features" when the store has them
    chunk_bounds: np.ndarray  # (n_chunks + 1,): chunk c holds ids [chunk_bounds[c], chunk_bounds[c + 1])
    chunk_split: np.ndarray  # (n_chunks,) index into ``splits``
    chunk_block: np.ndarray  # (n_chunks,) block number within its split
    blocks: tuple[int, ...]  # samples per block of each split
    store_path: str
    store_fingerprint: str
    fingerprint: str

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_split)

    @property
    def labels(self) -> np.ndarray:
        return self.row_fields["labels"]

    def chunk_rows(self, c: int) -> tuple[str, int, np.ndarray]:
        """Split name, first row of the block, and the selected rows of chunk ``c`` relative to it."""
        split = int(self.chunk_split[c])
        lo = int(self.chunk_block[c]) * self.blocks[split]
        return self.splits[split], lo, self.rows[self.chunk_bounds[c] : self.chunk_bounds[c + 1]] - lo

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(split name, row) of each sample id."""
        ids = np.asarray(ids)
        return np.asarray(self.splits)[self.split_of[ids]], self.rows[ids]


def _kept(store: LatentStore, split, role: str, fold: int | None, n_folds: int) -> np.ndarray:
    """Valid rows of ``split`` in ``role``: fold k is the test set, fold k+1 (mod n) validation, the rest training."""
    keep = split.meta("valid").astype(bool)
    if fold is None:
        return keep
    folds = split.meta("folds")
    if (folds < 0).any():
        raise StoreError(
            f"{store.path}: split {split.name!r} has samples without a fold (-1); re-encode with --folds to use --fold"
        )
    test, val = folds == fold, folds == (fold + 1) % n_folds
    return keep & {"test": test, "val": val, "train": ~(test | val)}[role]


def _optional_field(split, key: str) -> np.ndarray | None:
    try:
        return split.meta(key)
    except (StoreError, KeyError):
        return None


def select(store: LatentStore, role: str, fold: int | None = None, teacher: str = TEACHER) -> Selection:
    """The valid samples of ``role``: the stored split of that name (fold None) or fold ``fold``'s share.

    ``teacher`` names the stored teacher logits the selection carries as row field ``teacher_logits``
    (a store may hold several: one per fold or seed of an image-space teacher).
    """
    if role not in ROLES:
        raise UsageError(f"selection role {role!r}: expected one of {ROLES}")
    store.require_complete()
    n_folds = int(store.manifest.get("folds", {}).get("n_folds", 0))
    if fold is not None and n_folds < 3:
        raise StoreError(
            f"{store.path}: manifest folds.n_folds is {n_folds}; --fold needs a store encoded with --folds >= 3"
        )
    if fold is not None and not 0 <= fold < n_folds:
        raise UsageError(f"--fold {fold}: the store has folds 0..{n_folds - 1}")
    names = [role] if fold is None else sorted(store.splits)  # cross-validation pools every stored split
    if fold is None and role not in store.splits:
        raise StoreError(
            f"{store.path}: no split {role!r} (the store has {', '.join(sorted(store.splits))}); pass --fold k to "
            f"train on its cross-validation folds, or add {role.upper()} rows to the source's Split column and "
            "re-encode"
        )
    data = [store.split(name) for name in names]  # a StoreError naming the existing splits when one is absent
    rows = [np.flatnonzero(_kept(store, d, role, fold, n_folds)) for d in data]
    if sum(len(r) for r in rows) == 0:
        where = f"fold {fold} of splits {names}" if fold is not None else f"split {role!r}"
        raise StoreError(f"{store.path}: selection {role} of {where} has no valid samples")
    fields = {"labels": [d.meta("labels")[r] for d, r in zip(data, rows)]}
    found = [_optional_field(d, teacher) for d in data]
    if all(f is not None for f in found):
        fields["teacher_logits"] = [f[r] for f, r in zip(found, rows)]
    found = [_optional_field(d, teacher + FEATURES) for d in data]
    if all(f is not None for f in found):
        fields["teacher_features"] = [f[r] for f, r in zip(found, rows)]
    blocks = tuple(int(d.block) for d in data)
    per_split = [np.unique(r // block, return_counts=True) for r, block in zip(rows, blocks)]
    chunk_len = np.concatenate([counts for _, counts in per_split])
    digest = hashlib.sha256(b"".join(r.astype(np.int64).tobytes() + b"|" for r in rows)).hexdigest()[:16]
    store_fp = str(store.manifest.get("settings_fingerprint", ""))
    return Selection(
        role=role,
        fold=fold,
        splits=tuple(names),
        split_of=np.concatenate([np.full(len(r), s, dtype=np.int64) for s, r in enumerate(rows)]),
        rows=np.concatenate(rows).astype(np.int64),
        keys=np.concatenate([d.meta("keys")[r] for d, r in zip(data, rows)]),
        row_fields={k: np.concatenate(v) for k, v in fields.items()},
        chunk_bounds=np.concatenate([[0], np.cumsum(chunk_len)]).astype(np.int64),
        chunk_split=np.concatenate([np.full(len(b), s, dtype=np.int64) for s, (b, _) in enumerate(per_split)]),
        chunk_block=np.concatenate([b for b, _ in per_split]).astype(np.int64),
        blocks=blocks,
        store_path=str(store.path),
        store_fingerprint=store_fp,
        fingerprint=fingerprint({"store": store_fp, "splits": list(names), "blocks": blocks, "rows": digest}),
    )
