"""Read one chunk of a selection (one zarr chunk or one tar shard) whole, keeping the selected rows.

A ``ChunkReader`` is small and picklable and opens the store lazily, so it runs unchanged in
reader threads and in DALI's parallel external-source worker processes. Tar shards are read
directly through their index (offsets of each member), with no tar parsing per sample.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np

from engine.loaders.selection import Selection
from engine.store import StoreError, open_store

Chunk = tuple[np.ndarray, np.ndarray | None]  # latents (n, C, h, w) float16, logvar or None


class ChunkReader:
    def __init__(self, selection: Selection, fmt: str, latent_shape: tuple[int, ...], with_logvar: bool):
        self.selection, self.fmt, self.with_logvar = selection, fmt, with_logvar
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self._opened: dict = {}

    def _split(self, name: str):
        """The split, opened once per process (a zarr split keeps its arrays open: zarr re-reads metadata on lookup).

        The loader checked the store when it was made; a reader in a worker process does not repeat it.
        """
        if name not in self._opened:
            self._opened[name] = open_store(self.selection.store_path, check=False).split(name)
        return self._opened[name]

    def __call__(self, c: int) -> Chunk:
        name, lo, local = self.selection.chunk_rows(c)
        read = self._read_zarr if self.fmt == "zarr" else self._read_tar
        latents, logvar = read(name, lo, local, "latents"), None
        if self.with_logvar:
            logvar = read(name, lo, local, "logvar")
        return latents, logvar

    def _read_zarr(self, name: str, lo: int, local: np.ndarray, key: str) -> np.ndarray:
        split = self._split(name)
        block = split.read_written(key, lo, min(lo + split.block, split.size))  # errors name the shard file
        return block if len(local) == len(block) else block[local]

    def _read_tar(self, name: str, lo: int, local: np.ndarray, key: str) -> np.ndarray:
        split = self._split(name)
        b = lo // split.block
        ext = {"latents": "latent.npy", "logvar": "logvar.npy"}[key]
        tar, members = split.shard(b, "tar"), {}
        try:
            for line in split.shard(b, "idx").read_text().splitlines()[1:]:
                fields = line.split()
                for j in range(0, len(fields), 4):
                    if fields[j] == ext:
                        members[int(fields[j + 3].split(".", 1)[0]) - lo] = (int(fields[j + 1]), int(fields[j + 2]))
            raw = np.fromfile(tar, dtype=np.uint8)
        except (OSError, ValueError, IndexError) as err:
            raise StoreError(
                f"{tar}: unreadable shard or index ({err}); the store is damaged, re-encode it with --overwrite"
            ) from None
        count = int(np.prod(self.latent_shape))
        out = np.empty((len(local), *self.latent_shape), dtype=np.float16)
        for i, row in enumerate(local.tolist()):
            if row not in members:
                raise StoreError(
                    f"{tar}: no {ext} for row {lo + row}; the shard is incomplete, re-encode the store with --overwrite"
                )
            offset, size = members[row]
            if offset + size > len(raw) or size < 2 * count:
                raise StoreError(
                    f"{tar}: truncated ({len(raw)} bytes, row {lo + row} needs bytes {offset}-"
                    f"{offset + size}); the store is damaged, re-encode it with --overwrite"
                )
            # the array's bytes end the .npy member; its header length does not matter
            out[i] = np.frombuffer(raw, np.float16, count, offset + size - 2 * count).reshape(self.latent_shape)
        return out


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
