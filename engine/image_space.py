"""Image-space inputs for the baseline and the teacher: the store's own samples, as images, on the device.

The store records how to reopen its dataset, so an image-space run reads exactly the samples (and
folds) of the latent run it is compared with. Images are cached as uint8 on the device and
augmented there (the paper's flip and 15 degree rotation), so the baseline is not loader-starved.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.loaders import Selection
from engine.sources import open_source
from engine.sources.preprocess import to_model_input
from engine.store import LatentStore, StoreError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=None)
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1))


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) images in [0, 1] to the ImageNet-normalised input the ResNets expect."""
    mean, std = _imagenet_stats(x.device)
    return (x - mean) / std


def reopen_source(store: LatentStore):
    args = store.manifest["dataset"].get("open_args")
    if args is None:
        raise StoreError(f"{store.path}: the manifest does not record how to reopen its images "
                         "(dataset.open_args); re-encode it with this engine version")
    args = dict(args)
    return open_source(args.pop("spec"), **args)


def default_image_size(store: LatentStore) -> int:
    return min(256, int(store.manifest["image_size"]))


class ImageCache:
    """uint8 (N, 3, S, S) images of a selection, indexed by the selection's sample ids."""

    def __init__(self, store: LatentStore, selection: Selection, image_size: int, device: torch.device,
                 batch: int = 64):
        source = reopen_source(store)
        names, rows = selection.locate(np.arange(selection.size))
        need = selection.size * 3 * image_size**2
        print(f"caching {selection.size} images of {selection.role} at {image_size} px on {device}: {need / 2**30:.2f} GiB")
        self.images = torch.empty((selection.size, 3, image_size, image_size), dtype=torch.uint8, device=device)
        for lo in tqdm(range(0, selection.size, batch), desc=f"images {selection.role}", unit="batch"):
            imgs = [source.image(str(n), int(r)) for n, r in zip(names[lo:lo + batch], rows[lo:lo + batch])]
            x = to_model_input(imgs, image_size, (0.0, 1.0))
            self.images[lo:lo + len(imgs)] = (x * 255).round().to(torch.uint8).to(device)

    def batch(self, ids: torch.Tensor, augment_seed: int | None = None) -> torch.Tensor:
        """Normalised float images of ``ids``; with a seed, the paper's random flip and rotation."""
        x = self.images[ids.to(self.images.device)].float() / 255
        if augment_seed is not None:
            x = flip_rotate(x, augment_seed)
        return imagenet_normalise(x)


def flip_rotate(x: torch.Tensor, seed: int, max_degrees: float = 15.0) -> torch.Tensor:
    """Horizontal flip with p=0.5 and a rotation uniform in +-max_degrees, per sample, on x's device."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    b = x.shape[0]
    angle = (torch.rand(b, generator=g) * 2 - 1) * math.radians(max_degrees)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros(b)], 1),
                         torch.stack([sin * flip, cos, torch.zeros(b)], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
