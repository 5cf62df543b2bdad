"""The DALI loader: DALI reads and decodes whole chunks; our order, state and rank slices drive it.

webdataset stores go through ``fn.readers.webdataset`` + ``fn.decoders.numpy``, given the shards in the
order this rank first needs them (and, when the selection leaves out rows of a shard, an index file,
written once per loader, that lists only the selected samples). Other containers (zarr), which DALI
cannot read, go through a parallel ``external_source`` whose callable maps ``idx_in_epoch`` through
that same chunk order and returns one whole chunk per sample. One pipeline per pass: epoch and resume
point are ours, so DALI's own shuffling, sharding (``shard_id``/``num_shards`` would give each rank a
contiguous part and an order that changes with the world size) and checkpointing stay off. The pipelines
run on the CPU (``device_id=None``); batches reach the device through pinned, non-blocking copies.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from engine.loaders.assembler import ChunkPlan
from engine.loaders.chunk_reader import Chunk, ChunkReader
from engine.loaders.streaming import StreamingLoader

CHUNKS_PER_RUN = 8  # external source (zarr): chunks per pipeline iteration, read in parallel by the workers
SAMPLES_PER_RUN = 256  # webdataset: samples per reader iteration (larger is slower here: cache)
READER_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))  # the other half assembles batches and trains


class ChunkSource:
    """external_source callable: sample ``idx_in_epoch`` is chunk ``chunks[idx_in_epoch]``; empty past the end."""

    def __init__(self, reader: ChunkReader, chunks: np.ndarray):
        self.reader, self.chunks = reader, chunks
        self.padded = -(-len(chunks) // CHUNKS_PER_RUN) * CHUNKS_PER_RUN  # DALI drops a batch cut short

    def __call__(self, info):
        i = info.idx_in_epoch
        if i >= self.padded:
            raise StopIteration
        if i >= len(self.chunks):
            empty = np.zeros((0, *self.reader.latent_shape), dtype=np.float16)
            return (empty, empty) if self.reader.with_logvar else empty
        latents, logvar = self.reader(int(self.chunks[i]))
        return (latents, logvar) if self.reader.with_logvar else latents


class DaliLoader(StreamingLoader):
    name = "dali"
    _shard_list: list[tuple[str, str]] | None = None

    def _chunks(self, cplan: ChunkPlan) -> Iterator[Chunk]:
        if self.store.container.webdataset_shards:
            return self._wds_chunks(cplan.chunks)
        return self._external_chunks(cplan.chunks)

    def _external_chunks(self, chunks: np.ndarray) -> Iterator[Chunk]:
        from nvidia.dali import fn, pipeline_def

        outputs = 2 if self.with_logvar else 1
        chunk_bytes = 2 * int(np.prod(self.latent_shape)) * max(self.selection.blocks) + 4096  # + DALI's metadata
        parallel = {"parallel": True, "prefetch_queue_depth": 2, "bytes_per_sample_hint": chunk_bytes}
        # fork is fast, but not allowed once CUDA is initialised; spawned workers unpickle the reader
        start = "spawn" if torch.cuda.is_initialized() else "fork"

        @pipeline_def(
            batch_size=CHUNKS_PER_RUN,
            num_threads=1,
            device_id=None,
            py_num_workers=max(self.workers, 1),
            py_start_method=start,
            prefetch_queue_depth=2,
        )
        def pipe():
            out = fn.external_source(
                source=ChunkSource(self.reader, chunks),
                batch=False,
                num_outputs=outputs if outputs > 1 else None,
                **(parallel if self.workers else {}),
            )
            return tuple(out) if outputs > 1 else out

        p = pipe()
        p.build()
        for _ in range(-(-len(chunks) // CHUNKS_PER_RUN)):
            out = p.run()
            for i in range(len(out[0])):  # views of DALI's buffers: valid until the next run()
                latents = np.asarray(out[0][i])
                if len(latents):
                    yield latents, np.asarray(out[1][i]) if outputs > 1 else None

    def _wds_chunks(self, chunks: np.ndarray) -> Iterator[Chunk]:
        from nvidia.dali import fn, pipeline_def

        if not len(chunks):
            return
        shards = self._shards()
        paths, indices = zip(*(shards[c] for c in chunks.tolist()))
        exts = ["latent.npy", "logvar.npy"] if self.with_logvar else ["latent.npy"]

        @pipeline_def(batch_size=SAMPLES_PER_RUN, num_threads=READER_THREADS, device_id=None, prefetch_queue_depth=2)
        def pipe():
            out = fn.readers.webdataset(
                paths=list(paths), index_paths=list(indices), ext=exts, random_shuffle=False, name="reader"
            )
            return tuple(fn.decoders.numpy(o) for o in (out if isinstance(out, list) else [out]))

        p = pipe()
        p.build()
        current, pos = [np.zeros((0,))] * len(exts), 0
        for n in np.diff(self.selection.chunk_bounds)[chunks].tolist():
            parts = []
            while n:
                if pos == len(current[0]):
                    parts = [[np.array(a) for a in part] for part in parts]  # run() recycles its outputs
                    current, pos = [np.asarray(tl.as_tensor()) for tl in p.run()], 0
                take = min(n, len(current[0]) - pos)
                parts.append([a[pos : pos + take] for a in current])
                pos, n = pos + take, n - take
            chunk = parts[0] if len(parts) == 1 else [np.concatenate(q) for q in zip(*parts)]
            yield chunk[0], chunk[1] if self.with_logvar else None

    def _shards(self) -> list[tuple[str, str]]:
        """(tar, index) of every chunk; the index lists just the selected samples (the store's own when all are).

        Written once per loader into a temporary folder that is removed with the loader or at exit.
        """
        if self._shard_list is None:
            splits = {name: self.store.split(name) for name in self.selection.splits}
            index_dir = None
            self._shard_list = []
            for c in range(self.selection.n_chunks):
                name, lo, local = self.selection.chunk_rows(c)
                split = splits[name]
                b = lo // split.block
                tar, idx = split.shard(b, "tar"), split.shard(b, "idx")
                lines = idx.read_text().splitlines()[1:]
                if len(lines) != len(local):
                    if index_dir is None:
                        index_dir = Path(tempfile.mkdtemp(prefix="latent-dali-idx-"))
                        weakref.finalize(self, shutil.rmtree, index_dir, ignore_errors=True)
                    wanted = set((lo + local).tolist())
                    keep = [line for line in lines if int(line.split()[3].split(".", 1)[0]) in wanted]
                    idx = index_dir / f"{name}-{b:06d}.idx"
                    idx.write_text(f"v1.2 {len(keep)}\n" + "".join(f"{line}\n" for line in keep))
                self._shard_list.append((str(tar), str(idx)))
        return self._shard_list
