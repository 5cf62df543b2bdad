"""Loaders that read the store from disk while training: block order, whole-chunk reads, prefetch.

``TorchLoader`` is the one without DALI: whole chunks read by a few threads (zarr chunks as contiguous
slices, tar shards directly through their index, without the tar parser that makes webdataset's own reader
an order of magnitude slower on small latents), batches assembled in another. ``make_loader`` picks it
when the selection is over the resident loader's memory budget and DALI is not installed (as on GPU
machines without DALI).

Every rank reads the chunks of each window that its slices touch: with the global batch split across
ranks, that is nearly all of them, so W ranks read the data W times (from the page cache after the first).
That is the price of an order that does not change with the world size. Batches are gathered on the host
into pinned memory and copied with ``non_blocking`` on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.loaders.assembler import ChunkPlan, assemble, chunk_plan
from engine.loaders.chunk_reader import Chunk, ChunkReader, read_chunks
from engine.loaders.loader import Batch, LatentLoader
from engine.loaders.options import LoaderOptions
from engine.loaders.order import block_order
from engine.loaders.prefetch import prefetch
from engine.loaders.schedule import RankPlan
from engine.loaders.selection import Selection
from engine.store import LatentStore


class StreamingLoader(LatentLoader):
    def __init__(self, store: LatentStore, selection: Selection, options: LoaderOptions):
        super().__init__(selection, options)
        self.store, self.with_logvar, self.workers = store, options.with_logvar, options.workers
        self.window_chunks, self.prefetch_depth = options.window_chunks, options.prefetch_depth
        self.latent_shape = tuple(store.manifest["latent_shape"])
        self.reader = ChunkReader(selection, self.latent_shape, self.with_logvar)
        self.order_kind = f"block{self.window_chunks}"

    def order(self, epoch: int) -> np.ndarray:
        return block_order(self.selection.chunk_bounds, self.seed, epoch, self.window_chunks)

    def _chunks(self, cplan: ChunkPlan) -> Iterator[Chunk]:
        """``cplan.chunks`` read in that order; each array stays valid until the next one is asked for."""
        raise NotImplementedError

    def _batches(self, plan: RankPlan, start: int) -> Iterator[Batch]:
        cplan = chunk_plan(self.selection, plan, start)
        pin = self.device.type == "cuda"

        def produce() -> Iterator[Batch]:
            return assemble(self.selection, cplan, self._chunks(cplan), self.latent_shape, self.with_logvar, pin)

        for batch in prefetch(produce, self.prefetch_depth):
            yield batch.to(self.device, non_blocking=pin)


class TorchLoader(StreamingLoader):
    name = "torch"

    def _chunks(self, cplan: ChunkPlan) -> Iterator[Chunk]:
        return read_chunks(self.reader, cplan.chunks, self.workers)
