"""Batches from whole chunks: load each chunk once, when a step first needs it; free it after its last step.

Given the ids a rank consumes, in order, the chunks are needed in the order of their first use;
a reader streams them in that order and the assembler keeps the live ones in a fixed slab of
slots (sized in advance from the first/last use of every chunk), gathering each batch with one
``np.take``. With the block order about one window of chunks is live at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from engine.loaders.chunk_reader import Chunk
from engine.loaders.loader import Batch
from engine.loaders.schedule import RankPlan
from engine.loaders.selection import Selection
from engine.store import StoreError


@dataclass(frozen=True)
class ChunkPlan:
    ids: np.ndarray  # ids still to deliver, in order
    valid: np.ndarray
    offsets: np.ndarray  # step k of the remainder is ids[offsets[k]:offsets[k + 1]]
    chunk_of: np.ndarray  # chunk of every id in ``ids``
    chunks: np.ndarray  # chunks in the order they are first needed: the order to read them in
    first_step: np.ndarray  # step that first needs chunks[i]
    release: list[list[int]]  # chunks whose last use is step k
    slots: int  # most chunks live at once


def chunk_plan(selection: Selection, plan: RankPlan, start: int) -> ChunkPlan:
    lo = plan.offsets[start]
    ids, offsets = plan.ids[lo:], plan.offsets[start:] - lo
    step = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    chunk_of = np.searchsorted(selection.chunk_bounds, ids, side="right") - 1
    uniq, first = np.unique(chunk_of, return_index=True)
    _, last_rev = np.unique(chunk_of[::-1], return_index=True)
    first_step, last_step = step[first], step[len(ids) - 1 - last_rev]
    need = np.argsort(first, kind="stable")
    release: list[list[int]] = [[] for _ in range(len(offsets) - 1)]
    for c, k in zip(uniq.tolist(), last_step.tolist()):
        release[k].append(c)
    live = np.zeros(len(offsets), dtype=np.int64)
    np.add.at(live, first_step, 1)
    np.add.at(live, last_step + 1, -1)
    return ChunkPlan(
        ids=ids,
        valid=plan.valid[lo:],
        offsets=offsets,
        chunk_of=chunk_of,
        chunks=uniq[need],
        first_step=first_step[need],
        release=release,
        slots=int(np.cumsum(live).max(initial=0)),
    )


def assemble(
    selection: Selection,
    cplan: ChunkPlan,
    stream: Iterator[Chunk],
    latent_shape: tuple[int, ...],
    with_logvar: bool,
    pin: bool,
) -> Iterator[Batch]:
    """Host batches (pinned when ``pin``) for every remaining step; ``stream`` yields ``cplan.chunks`` in order."""
    bounds = selection.chunk_bounds
    cap = int(np.diff(bounds)[cplan.chunks].max(initial=0))
    slab = np.empty((cplan.slots * cap, *latent_shape), dtype=np.float16)
    slab_logvar = np.empty_like(slab) if with_logvar else None
    free, slot_of = list(range(cplan.slots)), np.full(selection.n_chunks, -1, dtype=np.int64)
    loaded = 0
    for k in range(len(cplan.offsets) - 1):
        while loaded < len(cplan.chunks) and cplan.first_step[loaded] <= k:
            c = int(cplan.chunks[loaded])
            latents, logvar = next(stream)
            n = int(bounds[c + 1] - bounds[c])
            if len(latents) != n:
                name, lo, _ = selection.chunk_rows(c)
                raise StoreError(
                    f"{selection.store_path}: split {name} block at row {lo} gave {len(latents)} samples, "
                    f"expected {n}; the store changed since it was opened (re-encoded?)"
                )
            s = slot_of[c] = free.pop()
            slab[s * cap : s * cap + n] = latents
            if slab_logvar is not None:
                slab_logvar[s * cap : s * cap + n] = logvar
            loaded += 1
        a, b = cplan.offsets[k], cplan.offsets[k + 1]
        ids, chunk = cplan.ids[a:b], cplan.chunk_of[a:b]
        pos = slot_of[chunk] * cap + ids - bounds[chunk]
        fields = {key: torch.from_numpy(value[ids]) for key, value in selection.row_fields.items()}
        yield Batch(
            latents=_take(slab, pos, pin),
            ids=torch.from_numpy(ids),
            valid=torch.from_numpy(cplan.valid[a:b]),
            logvar=None if slab_logvar is None else _take(slab_logvar, pos, pin),
            **fields,
        )
        for c in cplan.release[k]:
            free.append(int(slot_of[c]))


def _take(slab: np.ndarray, pos: np.ndarray, pin: bool) -> torch.Tensor:
    out = torch.empty((len(pos), *slab.shape[1:]), dtype=torch.float16, pin_memory=pin)
    np.take(slab, pos, axis=0, out=out.numpy())
    return out
