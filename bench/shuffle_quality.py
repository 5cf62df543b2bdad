"""How well an order mixes the store: distinct chunks per batch, against a uniform shuffle.

Samples in one chunk were encoded together (often from one class or patient when the source is
sorted), so a batch drawn from few chunks is correlated. A uniform shuffle draws a batch of b
from n samples; chunk c (n_c samples) is then missed with probability C(n - n_c, b) / C(n, b).
"""

from __future__ import annotations

from math import lgamma

import numpy as np


def expected_distinct_chunks(chunk_sizes: np.ndarray, batch: int) -> float:
    """Mean number of chunks a uniformly random batch of ``batch`` samples touches."""
    n = int(chunk_sizes.sum())
    if batch >= n:
        return float(len(chunk_sizes))

    def log_choose(a: int, k: int) -> float:
        return lgamma(a + 1) - lgamma(k + 1) - lgamma(a - k + 1)

    base = log_choose(n, batch)
    missed = [np.exp(log_choose(n - s, batch) - base) if n - s >= batch else 0.0 for s in chunk_sizes.tolist()]
    return float(len(chunk_sizes) - sum(missed))


def shuffle_quality(order: np.ndarray, chunk_bounds: np.ndarray, batch: int) -> dict:
    """Distinct chunks per full batch of ``order``, the uniform-shuffle ideal, and their ratio (1.0 is ideal)."""
    steps = len(order) // batch
    if steps == 0:
        raise ValueError(f"shuffle quality: batch {batch} is larger than the order ({len(order)} samples)")
    chunk = np.searchsorted(chunk_bounds, order[: steps * batch], side="right").reshape(steps, batch) - 1
    chunk.sort(axis=1)
    distinct = float(1 + (np.diff(chunk, axis=1) != 0).sum(axis=1).mean())
    ideal = expected_distinct_chunks(np.diff(chunk_bounds), batch)
    return {"batch": batch, "distinct_chunks_per_batch": distinct, "ideal": ideal, "ratio": distinct / ideal}
