"""The loader without DALI: whole chunks read by a few threads, batches assembled in another.

zarr chunks are read as contiguous slices (one decompression each); tar shards directly through
their index, without a tar parser (webdataset's own reader manages 4-9k samples/s here). This is
the path on GPU machines, where DALI is not installed.
"""
from __future__ import annotations

from typing import Iterator

from engine.loaders.assembler import ChunkPlan
from engine.loaders.chunk_reader import Chunk, read_chunks
from engine.loaders.streaming import StreamingLoader


class TorchLoader(StreamingLoader):
    name = "torch"

    def _chunks(self, cplan: ChunkPlan) -> Iterator[Chunk]:
        return read_chunks(self.reader, cplan.chunks, self.workers)
