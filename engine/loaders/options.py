"""What a run asks of its loader, written once: every loader is built from one ``LoaderOptions``.

``make_loader`` takes these as keyword arguments (its callers name them) and hands the loader it picks
this one object, so a new option is one field here, read where it matters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

WINDOW_CHUNKS = 16  # chunks shuffled together: >= 10x the samples of a chunk, as streaming's py1b advises
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class LoaderOptions:
    batch_size: int  # the global batch: each rank gets batch_size // world_size
    device: torch.device
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    tail: str = "drop"  # what happens to the last, short batch: drop, partial or pad_masked
    with_logvar: bool = False  # also deliver the posterior log-variance
    # chunk reads in flight: threads (torch loader, resident caching) or DALI external-source processes (DALI on
    # containers DALI cannot read itself); DALI's webdataset reader uses its own threads
    workers: int = DEFAULT_WORKERS
    memory_budget: int | None = None  # resident loader, bytes; default half the free device memory
    window_chunks: int = WINDOW_CHUNKS  # streaming loaders: chunks shuffled together
    prefetch_depth: int = 4  # streaming loaders: batches assembled ahead of the step
