"""`engine encode --views K`: each image encoded under K draws of the image arm's own augmentation, kept beside the
plain latents.

The image and recon arms train on images flipped and rotated up to 15 degrees; a latent cannot be rotated in
its place (autoencoders are not equivariant: engine/autoencoders/equivariance.py), so the latent arm gets
the augmentation as extra encodings, as latent-caching trainers (MAR, LightningDiT) do. View v of row r of a
split is ``flip_rotate`` (the image arm's code) of the image at the store's size with a seed drawn from (split,
row, v) alone, then encoded by the store's own autoencoder: the same bytes however often and in whatever order
it is written. Every split gets views, since a cross-validation fold trains on rows of every stored split;
validation and test never read them.

Written block by block as a derived array ``views`` (N, K, C, h, w) fp16, with a checksum and a flag per block,
as reconstructions are: a killed run, rerun, redoes only unfinished blocks, and the manifest's ``views`` record
(with the autoencoder's equivariance error) says when they are complete. One process adds them at a time (a lock
beside the store). Adding views leaves the plain latents,
the store's settings and its content identity untouched, so runs already trained on the store stay valid.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from engine.autoencoders import reload_autoencoder
from engine.autoencoders.equivariance import store_equivariance
from engine.errors import UsageError
from engine.sources.base import BadImageError
from engine.sources.preprocess import to_model_input
from engine.store import StoreError, open_store
from engine.store.derived import Block, finish, unfinished_blocks, write_blocks
from engine.store.lock import WriterLock
from engine.training.inputs import flip_rotate, reopen_source

FIELD = "views"
AUGMENTATION = "flip_rotate: horizontal flip p=0.5, rotation uniform in +-15 degrees (the image arm's)"


def view_seed(split: str, row: int, view: int) -> int:
    """The augmentation seed of view ``view`` of row ``row`` of ``split``: a function of the three alone."""
    return int.from_bytes(hashlib.blake2b(f"{split}/{row}/{view}".encode(), digest_size=8).digest(), "little") >> 2


def augmented_views(images: torch.Tensor, split: str, rows: np.ndarray, count: int) -> torch.Tensor:
    """(B, count, 3, H, W): each of ``images`` ((B, 3, H, W) in [0, 1], rows ``rows`` of ``split``) under its
    ``count`` seeded draws of the image arm's augmentation."""
    return torch.stack(
        [
            torch.cat([flip_rotate(image[None], view_seed(split, int(row), v)) for v in range(count)])
            for image, row in zip(images, rows)
        ]
    )


def add_views(store_path: Path, count: int, device: torch.device, batch_size: int = 32, log=print) -> dict:
    """Encode ``count`` augmented views of every valid row of every split into ``views``; returns the record."""
    if count < 1:
        raise UsageError(f"--views {count}: must be >= 1 (augmented views per image)")
    lock = WriterLock(store_path.with_name(f".{store_path.name}.views.lock"), "engine encode --views")
    with lock.acquire(store_path):
        return _add_views(store_path, count, device, batch_size, log)


def _add_views(store_path: Path, count: int, device: torch.device, batch_size: int, log) -> dict:
    store = open_store(store_path, writable=True)
    record = store.manifest.get(FIELD)
    if record is not None and record["count"] != count:
        raise UsageError(
            f"{store_path}: holds {record['count']} views per image, not {count}; keep --views {record['count']} "
            f"(a store keeps one set), or re-encode it with --overwrite --views {count}"
        )
    if record is not None and record.get("complete"):
        log(f"{store_path} already holds {count} views per image, complete; nothing to do")
        return record
    ae = reload_autoencoder(store.manifest["autoencoder"], device, store=str(store_path))
    source = reopen_source(store)
    size = int(store.manifest["image_size"])
    record = {
        "count": count,
        "augmentation": AUGMENTATION,
        "seeds": "blake2b of (split, row, view)",
        "image_size": size,
        "dtype": "float16",
        "autoencoder": ae.family,
        "config_hash": ae.config_hash,
        "of": "every valid row of every split; engine train --views reads those of its training selection",
        "complete": False,
    }
    store.set_manifest({**store.manifest, FIELD: record})
    todo = unfinished_blocks(store, FIELD)
    if todo:
        rows = sum(b.hi - b.lo for b in todo)
        log(f"encoding {count} augmented views of {rows} images of {store_path} with {ae.family}")

    def encode_block(block: Block) -> np.ndarray:
        split = store.split(block.split)
        return _encode_block(ae, source, split, block.lo, block.hi, size, count, batch_size)

    write_blocks(store, FIELD, todo, encode_block, "views")
    record["equivariance"] = store_equivariance(ae, source, store)
    return finish(store, FIELD, record)


def _encode_block(ae, source, split, lo: int, hi: int, size: int, count: int, batch_size: int) -> np.ndarray:
    """(hi - lo, count, C, h, w) fp16 views of rows [lo, hi) from ``size`` px images; skipped rows stay zero."""
    valid = np.flatnonzero(split.read("valid", lo, hi).astype(bool))
    out = np.zeros((hi - lo, count, *split.latent_shape), dtype=np.float16)
    low, high = ae.input_range
    per_batch = max(1, batch_size // count)  # images whose views make one batch of about batch_size
    for start in range(0, len(valid), per_batch):
        idx = valid[start : start + per_batch]
        try:
            images = [source.image(split.name, lo + int(i)) for i in idx]
        except BadImageError as err:
            raise StoreError(f"{err}; the image changed since encoding") from err
        views = augmented_views(to_model_input(images, size, (0.0, 1.0)), split.name, lo + idx, count)
        z = ae.encode(views.flatten(0, 1) * (high - low) + low)[0]
        out[idx] = z.float().cpu().numpy().astype(np.float16).reshape(len(idx), count, *split.latent_shape)
    if not np.isfinite(out.astype(np.float32)).all():
        raise StoreError(
            f"split {split.name} rows {lo}-{hi}: the autoencoder produced NaN/Inf views (fp16 overflow?); "
            "check its weights"
        )
    return out
