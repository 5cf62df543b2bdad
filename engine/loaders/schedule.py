"""Steps of an epoch: how an order becomes global batches, and which slice of each batch a rank takes.

Rank r takes slice r of every global batch, so the sequence of global batches is the same for
any world size that divides the global batch. The tail policy says what happens to the samples
after the last full global batch:
  drop        leave them out (training default; which samples drop changes every epoch),
  pad_masked  fill the last global batch with repeats marked invalid (``valid`` False), so every
              rank runs the same steps and every sample counts exactly once in loss and metrics,
  partial     a short last batch, split as evenly as the ranks allow (evaluation).
A global batch larger than the selection is an error under drop (an epoch of no steps) and one
short step under the other two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import UsageError

TAILS = ("drop", "pad_masked", "partial")


@dataclass(frozen=True)
class RankPlan:
    """This rank's epoch: sample ids in delivery order, their validity, and where each step starts."""

    ids: np.ndarray
    valid: np.ndarray
    offsets: np.ndarray  # (steps + 1,): step k is ids[offsets[k]:offsets[k + 1]]

    @property
    def steps(self) -> int:
        return len(self.offsets) - 1


@dataclass(frozen=True)
class Schedule:
    size: int
    global_batch: int
    world_size: int = 1
    rank: int = 0
    tail: str = "drop"

    def __post_init__(self) -> None:
        if self.tail not in TAILS:
            raise UsageError(f"tail {self.tail!r}: expected one of {TAILS}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise UsageError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.global_batch < 1 or self.global_batch % self.world_size:
            raise UsageError(
                f"global batch {self.global_batch} must be a positive multiple of the world size "
                f"{self.world_size} (each rank takes an equal slice)"
            )
        if self.size < 1:
            raise UsageError("the selection is empty: nothing to load")
        if self.tail == "drop" and self.global_batch > self.size:
            raise UsageError(
                f"batch size {self.global_batch} is larger than the selection ({self.size} samples) with "
                "tail='drop': an epoch would have no steps; lower the batch size (--batch-size)"
            )

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world_size

    @property
    def steps(self) -> int:
        full = self.size // self.global_batch
        return full if self.tail == "drop" or self.size % self.global_batch == 0 else full + 1

    def consumed(self, step: int) -> int:
        """Samples of the epoch consumed once ``step`` steps are delivered (the resumable state)."""
        return step * self.global_batch

    def step_of(self, consumed: int) -> int:
        if consumed % self.global_batch or not 0 <= consumed < self.steps * self.global_batch:
            raise UsageError(
                f"loader state: consumed {consumed} is not a step boundary of this epoch "
                f"(multiples of {self.global_batch} below {self.steps * self.global_batch})"
            )
        return consumed // self.global_batch

    def plan(self, order: np.ndarray) -> RankPlan:
        g, b, r, n = self.global_batch, self.per_rank, self.rank, self.size
        full = n // g if self.tail != "pad_masked" or n % g == 0 else self.steps
        pos = (np.arange(full)[:, None] * g + r * b + np.arange(b)).ravel()
        sizes = np.full(full, b)
        if self.tail == "pad_masked" and full * g > n:
            pad = full * g - n
            order = np.concatenate([order, order[n - 1 - np.arange(pad) % n]])  # repeats from the last window
        if self.tail == "partial" and n % g:
            m, w = n % g, self.world_size
            count = m // w + (r < m % w)
            start = full * g + r * (m // w) + min(r, m % w)
            pos, sizes = np.concatenate([pos, start + np.arange(count)]), np.append(sizes, count)
        return RankPlan(ids=order[pos], valid=pos < n, offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
