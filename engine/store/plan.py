"""The layout of a split before any latent is computed: what it holds, and how it is cut into blocks.

``SplitContent`` is the split's keys, labels, folds and patient groups. A block is the unit of
encoding, of resuming and of sharing among workers: one zarr chunk or one webdataset shard. Blocks
are grouped into zarr shards, and a worker owns whole shards, so no two processes ever write the
same file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from engine.errors import UsageError

CHUNK_BYTES = 1 << 20  # about 1 MiB of latents per block: large sequential reads, small resume units
BLOCKS_PER_SHARD = 8


@dataclass
class SplitContent:
    keys: np.ndarray  # (N,) str, unique within the split
    labels: np.ndarray  # (N,) int64 or (N, K) uint8 multi-label
    folds: np.ndarray  # (N,) int8 cross-validation fold, -1 when folds were not assigned
    groups: np.ndarray  # (N,) str patient id ("" when the source has none)

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name in ("labels", "folds", "groups"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"split content: {name} has {len(getattr(self, name))} rows, keys {n}")
        if len(set(self.keys.tolist())) != n:
            raise ValueError("split content: sample keys are not unique")


@dataclass(frozen=True)
class SplitPlan:
    name: str
    size: int
    block: int  # samples per block (the last block may be short)
    blocks_per_shard: int

    @property
    def n_blocks(self) -> int:
        return -(-self.size // self.block)

    def block_range(self, b: int) -> tuple[int, int]:
        return b * self.block, min((b + 1) * self.block, self.size)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_split(name: str, size: int, sample_bytes: int, block: int | None = None) -> SplitPlan:
    """Blocks of about CHUNK_BYTES unless ``block`` samples are asked for."""
    if block is None:
        block = max(16, min(8192, CHUNK_BYTES // max(sample_bytes, 1)))
    if block < 1:
        raise UsageError(f"--block-samples must be >= 1, got {block}")
    return SplitPlan(name, size, min(block, max(size, 1)), BLOCKS_PER_SHARD)


def blocks_for_rank(plan: SplitPlan, rank: int, world_size: int) -> list[int]:
    """The blocks worker ``rank`` encodes: whole shards, dealt round robin."""
    return [b for b in range(plan.n_blocks) if (b // plan.blocks_per_shard) % world_size == rank]
