"""Read one chunk of a selection (one block of a split) whole, keeping the selected rows.

A ``ChunkReader`` is small and picklable and opens the store lazily, so it runs unchanged in
reader threads and in DALI's parallel external-source worker processes. How a block is read is the
container's (``SplitData.read_selected``: a zarr chunk as one slice, a tar shard through its index).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np

from engine.loaders.selection import Selection
from engine.store import SplitData, open_store

Chunk = tuple[np.ndarray, np.ndarray | None]  # latents (n, C, h, w) float16, logvar or None


class ChunkReader:
    def __init__(self, selection: Selection, latent_shape: tuple[int, ...], with_logvar: bool):
        self.selection, self.with_logvar = selection, with_logvar
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self._opened: dict = {}

    def _split(self, name: str) -> SplitData:
        """The split, opened once per process (a zarr split keeps its arrays open: zarr re-reads metadata on lookup).

        The loader checked the store when it was made; a reader in a worker process does not repeat it.
        """
        if name not in self._opened:
            self._opened[name] = open_store(self.selection.store_path, check=False).split(name)
        return self._opened[name]

    def __call__(self, c: int) -> Chunk:
        name, lo, local = self.selection.chunk_rows(c)
        split = self._split(name)
        b = lo // split.block
        latents, logvar = split.read_selected("latents", b, local), None
        if self.with_logvar:
            logvar = split.read_selected("logvar", b, local)
        return latents, logvar


def read_chunks(reader: ChunkReader, chunks: np.ndarray, threads: int) -> Iterator[Chunk]:
    """Chunks in the given order, ``threads`` reads in flight (0: one at a time in this thread).

    Threads, not processes: zstd decompression and file reads release the GIL, and a chunk read
    in a thread needs no copy through shared memory (DataLoader worker processes pay that copy on every chunk).
    """
    if not threads:
        yield from map(reader, chunks.tolist())
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="latent-read") as pool:
        todo = iter(chunks.tolist())
        pending = deque(pool.submit(reader, c) for c in islice(todo, 2 * threads))
        try:
            while pending:
                chunk = pending.popleft().result()
                for c in islice(todo, 1):
                    pending.append(pool.submit(reader, c))
                yield chunk
        finally:
            for future in pending:
                future.cancel()
