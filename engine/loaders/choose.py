"""Pick the loader for a run, and say which and why.

auto: resident when the selection fits the memory budget (nothing is faster); otherwise DALI
when it is installed; otherwise the torch fallback. An explicit choice that cannot work (DALI
not installed, resident over its budget) is an error naming the fix, never a silent switch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.errors import UsageError
from engine.loaders.loader import LatentLoader
from engine.loaders.options import LoaderOptions
from engine.loaders.resident import ResidentLoader, default_budget, gib, resident_bytes
from engine.loaders.selection import Selection
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
    log: Callable[[str], None] = print,
    **options: Any,
) -> LatentLoader:
    """A loader of ``selection``; ``batch_size`` is the global batch (each rank gets batch_size // world_size).

    ``options`` are the other fields of ``LoaderOptions`` (engine/loaders/options.py: seed, rank, world_size,
    tail, with_logvar, workers, memory_budget, window_chunks, prefetch_depth), where they are defined and
    explained once; None keeps a field's default. The loader picked is handed them as that one object.
    """
    if loader not in LOADERS:
        raise UsageError(f"--loader {loader!r}: expected one of {LOADERS}")
    given = {key: value for key, value in options.items() if value is not None}
    opts = LoaderOptions(batch_size=batch_size, device=torch.device(device), **given)
    store.require_complete()
    same_store = selection.store_fingerprint == store.manifest.get("settings_fingerprint", "")
    if Path(selection.store_path).resolve() != Path(store.path).resolve() or not same_store:
        raise UsageError(
            f"selection was made from {selection.store_path}, not {store.path}; call select() on this store"
        )
    if opts.with_logvar and not all(store.split(name).has_logvar for name in selection.splits):
        raise StoreError(f"{store.path}: the store has no posterior log-variance; re-encode with --posterior")
    name, why = loader, "asked for"
    if loader == "auto":
        need = resident_bytes(selection, tuple(store.manifest["latent_shape"]), opts.with_logvar)
        budget = default_budget(opts.device) if opts.memory_budget is None else int(opts.memory_budget)
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
        f"rank {opts.rank}/{opts.world_size}, tail {opts.tail}"
    )
    if name == "resident":
        return ResidentLoader(store, selection, opts, log=log)
    if name == "dali":
        from engine.loaders.dali import DaliLoader

        return DaliLoader(store, selection, opts)
    from engine.loaders.streaming import TorchLoader

    return TorchLoader(store, selection, opts)
