"""Equivariance error: how far E(Tx) is from T E(x) for a transform T that acts on images and latents alike.

A latent classifier cannot be given the image arm's augmentation by transforming stored latents unless the
autoencoder commutes with the transform; pretrained autoencoders do not (EQ-VAE, arXiv 2502.09509), which is why
augmented views are encoded from transformed images. The error ||E(Tx) - T E(x)|| / ||E(x)||, per image and
averaged, says how far off a latent-space transform would be: 0 for an exactly equivariant autoencoder. The
transforms here are exact on a pixel grid and on a latent grid (no interpolation), so any error is the
autoencoder's own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from engine.sources.preprocess import to_model_input

SAMPLE_ROWS = 64  # images the error is measured on: the first valid rows of the train split
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hflip": lambda t: t.flip(-1),  # horizontal flip of (..., H, W)
    "rot90": lambda t: t.rot90(1, (-2, -1)),  # a quarter turn counter-clockwise
}


def equivariance_error(ae, images: torch.Tensor) -> dict[str, float]:
    """Mean over ``images`` ((B, 3, H, W) in ``ae``'s input range) of ||E(Tx) - T E(x)|| / ||E(x)|| per transform."""
    z = ae.encode(images)[0].double()
    norm = z.flatten(1).norm(dim=1)
    out = {}
    for name, transform in TRANSFORMS.items():
        moved = ae.encode(transform(images))[0].double()
        out[name] = float(((moved - transform(z)).flatten(1).norm(dim=1) / norm).mean())
    return out


def store_equivariance(ae, source, store, rows: int = SAMPLE_ROWS, batch: int = 32) -> dict:
    """The equivariance error of ``ae`` on the first ``rows`` valid training images of ``store``'s source, at the
    store's image size; the manifest's record."""
    split = "train" if "train" in store.splits else store.splits[0]
    chosen = np.flatnonzero(store.split(split).meta("valid").astype(bool))[:rows]
    size = int(store.manifest["image_size"])
    sums = dict.fromkeys(TRANSFORMS, 0.0)
    for lo in range(0, len(chosen), batch):
        idx = chosen[lo : lo + batch]
        images = to_model_input([source.image(split, int(i)) for i in idx], size, ae.input_range)
        for name, value in equivariance_error(ae, images).items():
            sums[name] += value * len(idx)
    return {
        "error": {name: round(total / max(len(chosen), 1), 6) for name, total in sums.items()},
        "split": split,
        "rows": f"first {len(chosen)} valid rows",
        "of": "||E(Tx) - T E(x)|| / ||E(x)|| per image, mean; E the posterior mode in float32, T exact on both grids",
    }
