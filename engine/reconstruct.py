"""`engine encode --reconstructions`: decode a store's latents once with its own autoencoder and keep them.

The reconstruction arm of the learnability gap trains the image-space classifier on D(z): the very latents
the store holds (fp16), decoded by the autoencoder recorded in the manifest (reloaded and checked by its
config hash), resized to the image classifier's input size and kept as uint8 in the store beside the
latents. Written block by block with a checksum and a flag per block, like encoding: a killed run, rerun,
redoes only unfinished blocks; the manifest's ``reconstructions`` record says when they are complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.autoencoders import reload_autoencoder
from engine.autoencoders.fidelity import to_unit
from engine.errors import UsageError
from engine.sources.preprocess import resize
from engine.store import open_store
from engine.store.derived import Block, finish, unfinished_blocks, write_blocks
from engine.store.space import ADDED, require_free_space
from engine.training.inputs import default_image_size

FIELD = "reconstructions"


def add_reconstructions(
    store_path: Path, device: torch.device, image_size: int | None = None, batch_size: int = 64, log=print
) -> dict:
    """Decode every valid row of every split into ``reconstructions`` (N, 3, S, S) uint8; returns the record."""
    store = open_store(store_path, writable=True)
    size = image_size or default_image_size(store)
    record = store.manifest.get(FIELD)
    if record is not None and record["image_size"] != size:
        raise UsageError(
            f"{store_path}: holds reconstructions at {record['image_size']} px, not {size}; keep "
            f"--image-size {record['image_size']} (the store keeps one size)"
        )
    todo = unfinished_blocks(store, FIELD)
    rows = sum(b.hi - b.lo for b in todo)
    require_free_space(store.path, rows * 3 * size * size, ADDED)  # uint8 RGB rows, before any decoding
    ae = reload_autoencoder(store.manifest["autoencoder"], device, store=str(store_path))
    record = {
        "image_size": size,
        "dtype": "uint8",
        "autoencoder": ae.family,
        "config_hash": ae.config_hash,
        "of": "the stored fp16 latents decoded by the store's autoencoder, resized (antialiased) to image_size",
        "complete": False,
    }
    store.set_manifest({**store.manifest, FIELD: record})
    if todo:
        log(f"decoding {rows} latents of {store_path} with {ae.family} into {size} px reconstructions")

    def decode_block(block: Block) -> np.ndarray:
        split = store.split(block.split)
        latents, valid = split.read("latents", block.lo, block.hi), split.read("valid", block.lo, block.hi)
        images = np.zeros((block.hi - block.lo, 3, size, size), dtype=np.uint8)  # skipped rows stay black
        keep = np.flatnonzero(valid.astype(bool))
        for start in range(0, len(keep), batch_size):
            idx = keep[start : start + batch_size]
            x = to_unit(ae.decode(torch.from_numpy(latents[idx])), ae.input_range)
            images[idx] = (resize(x.cpu(), size) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        return images

    write_blocks(store, FIELD, todo, decode_block, "reconstruct")
    return finish(store, FIELD, record)
