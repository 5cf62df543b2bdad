"""Sample order as a pure function of (seed, epoch): never the global RNG, never the history of a run.

``global_order`` is a uniform permutation, for data already in memory. ``block_order`` is the
chunk-aware shuffle for data read from disk (MosaicML streaming's py1b): permute the chunks,
cut the permuted chunks into windows of ``window_chunks``, permute the samples inside each window.
A reader then holds about one window of chunks at a time and reads every chunk whole, once.
"""

from __future__ import annotations

import numpy as np

GLOBAL, BLOCK = 0, 1  # independent random streams for the two kinds of order


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    if seed < 0 or epoch < 0:
        raise ValueError(f"order: seed ({seed}) and epoch ({epoch}) must be >= 0")
    return np.random.default_rng([seed, epoch, stream])


def global_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A uniform permutation of 0..n-1."""
    return epoch_rng(seed, epoch, GLOBAL).permutation(n)


def block_order(chunk_bounds: np.ndarray, seed: int, epoch: int, window_chunks: int) -> np.ndarray:
    """A permutation of 0..n-1 in which every window of ``window_chunks`` consecutive (permuted) chunks stays
    together."""
    if window_chunks < 1:
        raise ValueError(f"window_chunks must be >= 1, got {window_chunks}")
    rng = epoch_rng(seed, epoch, BLOCK)
    sizes = np.diff(chunk_bounds)
    perm = rng.permutation(len(sizes))
    perm_sizes = sizes[perm]
    first = np.repeat(np.cumsum(perm_sizes) - perm_sizes, perm_sizes)
    ids = np.repeat(chunk_bounds[:-1][perm], perm_sizes) + np.arange(len(first)) - first
    window = np.repeat(np.arange(len(perm)) // window_chunks, perm_sizes)
    return ids[np.lexsort((rng.random(len(ids)), window))]
