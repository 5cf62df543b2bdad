"""`engine train --views`: the latent arm trained on augmented views (`engine encode --views K`) in place of the
plain latents.

Every epoch each training sample is fed one of its K stored views, chosen by a draw keyed by (seed, epoch)
alone and indexed by the sample's id in the selection: the same choice however the epoch is cut into steps
or resumed. The plain latent is never among the choices: the image arm never sees an unaugmented image
either (its rotation is never exactly 0). Validation and test always read the plain latents.

The views of the training selection are read once and held on the training device (K times its latents,
printed first), as the image arm holds its images: a step gathers its batch's views by id, with no read.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from tqdm import tqdm

from engine.loaders import Batch, Selection
from engine.store import LatentStore, StoreError
from engine.views import FIELD


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s choice of views in a run seeded ``seed``: apart from every step's draws."""
    return int.from_bytes(hashlib.blake2b(f"views/{seed}/{epoch}".encode(), digest_size=8).digest(), "little") >> 2


class TrainingViews:
    """(N, K, C, h, w) fp16 views of a training selection on the device, and the epoch's choice among them."""

    def __init__(self, views: torch.Tensor, seed: int):
        self.views, self.seed = views, seed
        self.set_epoch(0)

    @classmethod
    def cache(cls, store: LatentStore, selection: Selection, device: torch.device, seed: int) -> TrainingViews:
        """The stored views of ``selection``'s samples, in id order; a store without complete views is refused."""
        record = store.manifest.get(FIELD) or {}
        if not record.get("complete"):
            raise StoreError(
                f"{store.path}: --views needs augmented views, the store has "
                f"{'an unfinished set' if record else 'none'}; add them with `engine encode --views K --out "
                f"{store.path}`"
            )
        shape = (selection.size, int(record["count"]), *store.manifest["latent_shape"])
        print(
            f"caching {shape[1]} views of {selection.size} samples of {selection.role} on {device}: "
            f"{2 * np.prod(shape) / 2**30:.2f} GiB"
        )
        views = torch.empty(shape, dtype=torch.float16, device=device)
        for c in tqdm(range(selection.n_chunks), desc=f"views {selection.role}", unit="block"):
            name, lo, local = selection.chunk_rows(c)
            split = store.split(name)
            block = split.read_derived(FIELD, lo, min(lo + split.block, split.size))
            ids = slice(int(selection.chunk_bounds[c]), int(selection.chunk_bounds[c + 1]))
            views[ids] = torch.from_numpy(block[local]).to(device)
        return cls(views, seed)

    def set_epoch(self, epoch: int) -> None:
        g = torch.Generator(device="cpu").manual_seed(epoch_seed(self.seed, epoch))
        self.choice = torch.randint(self.views.shape[1], (self.views.shape[0],), generator=g).to(self.views.device)

    def latents(self, batch: Batch) -> torch.Tensor:
        """The epoch's view of each sample of ``batch``, fp16 on the batch's device."""
        ids = batch.ids.to(self.views.device)
        return self.views[ids, self.choice[ids]].to(batch.latents.device)
