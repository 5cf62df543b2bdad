"""Per-channel mean/std of latents, accumulated per block in float64 and merged in block order.

Each block keeps (count, mean, M2) per channel; Chan's pairwise merge in a fixed order makes the
result independent of how a run was interrupted or split across workers, and avoids the
cancellation of E[x^2] - E[x]^2.
"""

from __future__ import annotations

import numpy as np


def block_moments(latents: np.ndarray) -> np.ndarray:
    """(N, C, ...) -> (C, 3) float64 rows of (count, mean, M2) over all but the channel axis."""
    x = np.moveaxis(np.asarray(latents, dtype=np.float64), 1, 0).reshape(latents.shape[1], -1)
    count = np.full(x.shape[0], x.shape[1], dtype=np.float64)
    if x.shape[1] == 0:
        return np.zeros((x.shape[0], 3))
    mean = x.mean(axis=1)
    m2 = ((x - mean[:, None]) ** 2).sum(axis=1)
    return np.stack([count, mean, m2], axis=1)


def merge_moments(blocks: list[np.ndarray]) -> np.ndarray:
    """Merge (C, 3) moment rows in the given order (Chan et al.)."""
    total = np.zeros_like(blocks[0])
    for b in blocks:
        n_a, n_b = total[:, 0], b[:, 0]
        n = n_a + n_b
        safe = np.where(n > 0, n, 1.0)
        delta = b[:, 1] - total[:, 1]
        mean = total[:, 1] + delta * n_b / safe
        m2 = total[:, 2] + b[:, 2] + delta**2 * n_a * n_b / safe
        total = np.stack([n, mean, m2], axis=1)
    return total


def mean_std(moments: np.ndarray) -> tuple[list[float], list[float]]:
    """Population mean and std per channel (std floored at 1e-6 so standardising never divides by 0)."""
    n = np.maximum(moments[:, 0], 1.0)
    std = np.sqrt(np.maximum(moments[:, 2] / n, 1e-12))
    return moments[:, 1].tolist(), np.maximum(std, 1e-6).tolist()
