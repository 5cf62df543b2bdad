"""Pick the loader for a run, and say which and why.

auto: resident when the selection fits the memory budget (nothing is faster); otherwise DALI
when it is installed; otherwise the torch fallback. An explicit choice that cannot work (DALI
not installed, resident over its budget) is an error naming the fix, never a silent switch.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import torch

from engine.errors import UsageError
from engine.loaders.loader import LatentLoader
from engine.loaders.resident import ResidentLoader, default_budget, gib, resident_bytes
from engine.loaders.selection import Selection
from engine.loaders.streaming import WINDOW_CHUNKS
from engine.store import LatentStore, StoreError

LOADERS = ("auto", "resident", "dali", "torch")


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def make_loader(
    store: LatentStore,
    selection: Selection,
    batch_size: int,
    device: str | torch.device = "cpu",
    loader: str = "auto",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    tail: str = "drop",
    with_logvar: bool = False,
    memory_budget: int | None = None,
    window_chunks: int = WINDOW_CHUNKS,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> LatentLoader:
    """A loader of ``selection``; ``batch_size`` is the global batch (each rank gets batch_size // world_size).

    ``workers``: chunk reads in flight, as threads (torch loader, resident caching) or DALI
    external-source processes (DALI on zarr); DALI's webdataset reader uses its own threads.
    ``memory_budget`` (bytes) bounds the resident loader: default half the free device memory.
    """
    if loader not in LOADERS:
        raise UsageError(f"--loader {loader!r}: expected one of {LOADERS}")
    store.require_complete()
    same_store = selection.store_fingerprint == store.manifest.get("settings_fingerprint", "")
    if Path(selection.store_path).resolve() != Path(store.path).resolve() or not same_store:
        raise UsageError(
            f"selection was made from {selection.store_path}, not {store.path}; call select() on this store"
        )
    if with_logvar and not all(store.split(name).has_logvar for name in selection.splits):
        raise StoreError(f"{store.path}: the store has no posterior log-variance; re-encode with --posterior")
    device = torch.device(device)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    common = dict(seed=seed, rank=rank, world_size=world_size, tail=tail, with_logvar=with_logvar)
    shape = tuple(store.manifest["latent_shape"])
    name, why = loader, "asked for"
    if loader == "auto":
        need = resident_bytes(selection, shape, with_logvar)
        budget = default_budget(device) if memory_budget is None else int(memory_budget)
        if need <= budget:
            name, why = "resident", f"the selection ({gib(need)}) fits the memory budget ({gib(budget)})"
        else:
            name = "dali" if dali_available() else "torch"
            why = f"the selection ({gib(need)}) exceeds the memory budget ({gib(budget)}); " + (
                "DALI is installed" if name == "dali" else "DALI is not installed, using the torch fallback"
            )
    if name == "dali" and not dali_available():
        raise UsageError(
            "--loader dali: nvidia-dali is not installed (pip install nvidia-dali-cuda130); use --loader torch or auto"
        )
    log(
        f"loader: {name} ({why}); {selection.size} samples of {selection.role}"
        f"{'' if selection.fold is None else f' (fold {selection.fold})'}, global batch {batch_size}, "
        f"rank {rank}/{world_size}, tail {tail}"
    )
    if name == "resident":
        return ResidentLoader(
            store, selection, batch_size, device, memory_budget=memory_budget, workers=workers, log=log, **common
        )
    if name == "dali":
        from engine.loaders.dali import DaliLoader

        return DaliLoader(store, selection, batch_size, device, window_chunks=window_chunks, workers=workers, **common)
    from engine.loaders.streaming import TorchLoader

    return TorchLoader(store, selection, batch_size, device, window_chunks=window_chunks, workers=workers, **common)
