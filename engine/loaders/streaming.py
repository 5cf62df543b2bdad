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
import torch

from engine.loaders.assembler import ChunkPlan, assemble, chunk_plan
from engine.loaders.chunk_reader import Chunk, ChunkReader, read_chunks
from engine.loaders.loader import Batch, LatentLoader
from engine.loaders.order import block_order
from engine.loaders.prefetch import prefetch
from engine.loaders.schedule import RankPlan
from engine.loaders.selection import Selection
from engine.store import LatentStore

WINDOW_CHUNKS = 16  # chunks shuffled together: >= 10x the samples of a chunk, as streaming's py1b advises


class StreamingLoader(LatentLoader):
    def __init__(
        self,
        store: LatentStore,
        selection: Selection,
        batch_size: int,
        device: str | torch.device,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        tail: str = "drop",
        with_logvar: bool = False,
        window_chunks: int = WINDOW_CHUNKS,
        workers: int = 2,
        prefetch_depth: int = 4,
    ):
        super().__init__(selection, batch_size, device, seed, rank, world_size, tail)
        self.store, self.with_logvar, self.workers = store, with_logvar, workers
        self.window_chunks, self.prefetch_depth = window_chunks, prefetch_depth
        self.latent_shape = tuple(store.manifest["latent_shape"])
        self.reader = ChunkReader(selection, self.latent_shape, with_logvar)
        self.order_kind = f"block{window_chunks}"

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
