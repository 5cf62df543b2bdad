"""The fastest loader is no loader: the whole selection on the device in fp16, batches by device-side gather.

Loading reads every chunk once, contiguously; an epoch then uploads this rank's ids once and
each step is an ``index_select`` on the device, with no host work. The memory it will take is
printed before anything is cached, and a selection over the budget is refused, never truncated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from engine.environment import host_memory_available
from engine.loaders.chunk_reader import ChunkReader, read_chunks
from engine.loaders.loader import Batch, LatentLoader
from engine.loaders.options import LoaderOptions
from engine.loaders.order import global_order
from engine.loaders.schedule import RankPlan
from engine.loaders.selection import Selection
from engine.store import LatentStore

BUDGET_FRACTION = 0.5  # of the free device memory (or available RAM on the CPU) by default


class MemoryBudgetError(ValueError):
    """The selection does not fit the resident loader's memory budget."""


def resident_bytes(selection: Selection, latent_shape: tuple[int, ...], with_logvar: bool) -> int:
    """Device bytes for the selection: latents (+ logvar), per-row fields, and an epoch's ids."""
    per_sample = 2 * int(np.prod(latent_shape)) * (2 if with_logvar else 1)
    fields = sum(v[:1].nbytes for v in selection.row_fields.values())
    return selection.size * (per_sample + fields + 8 + 1)


def default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * BUDGET_FRACTION)
    return int(host_memory_available() * BUDGET_FRACTION)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class ResidentLoader(LatentLoader):
    name = "resident"
    order_kind = "global"

    def __init__(
        self, store: LatentStore, selection: Selection, options: LoaderOptions, log: Callable[[str], None] = print
    ):
        super().__init__(selection, options)
        shape, with_logvar = tuple(store.manifest["latent_shape"]), options.with_logvar
        need = resident_bytes(selection, shape, with_logvar)
        budget = default_budget(self.device) if options.memory_budget is None else int(options.memory_budget)
        if need > budget:
            raise MemoryBudgetError(
                f"resident loader: {selection.size} samples need {gib(need)} on {self.device}, over the memory budget "
                f"of {gib(budget)}; use --loader dali or --loader torch, which stream the store from disk"
            )
        log(
            f"resident loader: caching {selection.size} samples of {'x'.join(map(str, shape))} fp16"
            f"{' + logvar' if with_logvar else ''} = {gib(need)} on {self.device} (budget {gib(budget)})"
        )
        latents = np.empty((selection.size, *shape), dtype=np.float16)
        logvar = np.empty_like(latents) if with_logvar else None
        reader = ChunkReader(selection, shape, with_logvar)
        bounds = selection.chunk_bounds
        for c, (lat, lv) in enumerate(read_chunks(reader, np.arange(selection.n_chunks), options.workers)):
            latents[bounds[c] : bounds[c + 1]] = lat
            if logvar is not None:
                logvar[bounds[c] : bounds[c + 1]] = lv
        self.latents = torch.from_numpy(latents).to(self.device)
        self.logvar = None if logvar is None else torch.from_numpy(logvar).to(self.device)
        self.fields = {k: torch.from_numpy(v).to(self.device) for k, v in selection.row_fields.items()}

    def order(self, epoch: int) -> np.ndarray:
        return global_order(self.selection.size, self.seed, epoch)

    def _batches(self, plan: RankPlan, start: int) -> Iterator[Batch]:
        ids = torch.from_numpy(plan.ids).to(self.device)
        valid = torch.from_numpy(plan.valid).to(self.device)
        for k in range(start, plan.steps):
            a, b = int(plan.offsets[k]), int(plan.offsets[k + 1])
            i = ids[a:b]
            yield Batch(
                latents=gather(self.latents, i),
                ids=i,
                valid=valid[a:b],
                logvar=None if self.logvar is None else gather(self.logvar, i),
                **{key: gather(value, i) for key, value in self.fields.items()},
            )


def gather(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Rows ``i`` of ``x``; on the CPU through numpy, whose take is ~30x torch's fp16 index_select there."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.take(x.numpy(), i.numpy(), axis=0))
    return x.index_select(0, i)
