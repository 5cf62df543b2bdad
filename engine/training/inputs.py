"""What the classifier sees: stored latents standardised, masked and noised in one pass, or augmented images.

Every random draw is keyed by (seed, step) through ``step_seed``, never by a running RNG, so a resumed
run draws exactly what the uninterrupted one drew.

Latents (``LatentInputs``): per-channel standardisation to ``target_std`` (the paper's 0.5, from the
manifest's statistics: the stored latents are never rewritten), 20 % element masking and
``alpha * z + sigma * eps`` in one ``kernels.add_noise`` pass, with Philox in the kernel (no noise or mask
tensor). ``precondition`` applies EDM's input scaling c_in = 1 / sqrt(alpha^2 target_std^2 + sigma^2)
(not in the paper): without it, inputs at sigma 80 have std 80 and drown what the low-sigma samples
teach; add_noise is linear in alpha and sigma, so the scaling rides along in the same pass.

Images (``ImageInputs``): the store's own samples, cached as uint8 on the device and augmented there
(the paper's flip and 15 degree rotation), so the image-space baseline is not loader-starved.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.errors import UsageError
from engine.loaders import Batch, Selection
from engine.sources import Source, open_source
from engine.sources.preprocess import resize, to_model_input
from engine.store import LatentStore, StoreError
from engine.training.noise_schedules import N_LEVELS, NOISE_SCHEDULES
from kernels import add_noise, c_noise
from kernels.noise_levels import NoiseLevels, karras_levels, karras_sigmas

CLEAN_LEVEL = N_LEVELS - 1  # sigma 0.002: evaluation inside the trained range, unlike the reference code's 1e-5
REFERENCE_CLEAN_SIGMA = 1e-5  # the reference code's clean evaluation: no noise, the embedding of this sigma
IMAGE_SIZE = 256  # the paper's image-space classifiers take 256 px
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STREAMS = 7  # random streams a latent step may draw from (levels, noise and mask, evaluation levels...)


def step_seed(seed: int, index: int) -> int:
    """The seed of draw ``index`` of a run seeded ``seed``: dropout and augmentation use the step itself,
    the latent inputs ``STREAMS * step + stream``."""
    return (seed * 1_000_003 + index) % (2**62)


class LatentInputs:
    """Stored fp16 latents -> the classifier's input and its noise levels."""

    def __init__(
        self,
        *,
        channel_mean: list[float],
        channel_std: list[float],
        device: torch.device,
        noise: str = "karras",
        mask_p: float = 0.2,
        target_std: float = 0.5,
        precondition: bool = False,
        seed: int = 0,
    ):
        if noise not in NOISE_SCHEDULES:
            raise UsageError(f"--noise {noise!r}: expected one of {', '.join(NOISE_SCHEDULES)}")
        self.schedule = NOISE_SCHEDULES[noise]
        self.mask_p, self.target_std, self.seed = mask_p, target_std, seed
        self.precondition = precondition
        self.mean = torch.tensor(channel_mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(channel_std, dtype=torch.float32, device=device)
        self.device = device

    @classmethod
    def from_config(cls, cfg, manifest: dict, device: torch.device) -> LatentInputs:
        """The inputs of a run of ``cfg`` (a TrainConfig) on the store whose manifest is given."""
        stats = manifest["channel_stats"]
        return cls(
            channel_mean=stats["mean"],
            channel_std=stats["std"],
            device=device,
            noise=cfg.noise,
            mask_p=cfg.mask_p,
            target_std=cfg.target_std,
            precondition=cfg.precondition,
            seed=cfg.seed,
        )

    def _key(self, step: int, stream: int) -> int:
        return step_seed(self.seed, STREAMS * step + stream)

    def network_seed(self, step: int) -> int:
        """The seed of the network's own draws at training step ``step`` (dropout, stochastic depth)."""
        return step_seed(self.seed, step)

    def draw_levels(self, batch: int, step: int) -> NoiseLevels:
        """One noise level per sample of training step ``step``, from the ``--noise`` schedule (the paper: uniform
        over the 32 Karras levels)."""
        g = torch.Generator(device="cpu").manual_seed(self._key(step, 1))
        return self.schedule(batch, g, self.device)

    def _scaled(self, lv: NoiseLevels) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.precondition:
            return lv.alpha, lv.sigma
        c_in = (lv.alpha.square() * self.target_std**2 + lv.sigma.square()).rsqrt()
        return lv.alpha * c_in, lv.sigma * c_in

    def noised(
        self, latents: torch.Tensor, levels: NoiseLevels, step: int, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Standardised, masked (``mask_p``) and noised latents of training step ``step``, in ``dtype``: float32, or
        the dtype the network computes in (``objective.network_input_dtype``). A half dtype is written by add_noise's
        pass itself, rounded once from its float32 math (no second pass, no float32 copy between); float32 (a CPU
        step's) is the stored dtype's values widened, as the CPU runs on record computed it."""
        alpha, sigma = self._scaled(levels)
        return add_noise(
            latents,
            self.mean,
            self.std,
            alpha,
            sigma,
            seed=self._key(step, 2),
            mask_p=self.mask_p,
            target_std=self.target_std,
            out_dtype=dtype if dtype.itemsize < 4 else None,
        ).to(dtype)

    def at_level(self, latents: torch.Tensor, level: int) -> tuple[torch.Tensor, NoiseLevels]:
        """Unmasked input at Karras level ``level`` (CLEAN_LEVEL: the lowest trained sigma), for evaluation."""
        lv = karras_levels(torch.full((latents.shape[0],), level, dtype=torch.long, device=self.device), N_LEVELS)
        alpha, sigma = self._scaled(lv)
        x = add_noise(
            latents,
            self.mean,
            self.std,
            alpha,
            sigma,
            seed=self._key(0, 3 + level),
            mask_p=0.0,
            target_std=self.target_std,
        )
        return x.float(), lv

    def reference_clean(self, latents: torch.Tensor) -> tuple[torch.Tensor, NoiseLevels]:
        """The reference code's clean input: standardised, no noise and no mask, with the noise embedding of
        sigma 1e-5 (outside the trained range; --clean-eval reference)."""
        ones = torch.ones(latents.shape[0], device=self.device)
        lv = NoiseLevels(ones, ones * 0, c_noise(ones * REFERENCE_CLEAN_SIGMA), None)
        alpha, sigma = self._scaled(lv)
        x = add_noise(latents, self.mean, self.std, alpha, sigma, seed=0, mask_p=0.0, target_std=self.target_std)
        return x.float(), lv

    def eval_input_at(self, level: int | str, conditioned: bool) -> Callable[[Batch], tuple]:
        """(x, c_noise) of a batch at Karras level ``level``, or clean as the reference code evaluates
        (``level="reference"``); c_noise None for an unconditioned model."""

        def make(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
            latents = batch.latents
            x, levels = self.reference_clean(latents) if level == "reference" else self.at_level(latents, level)
            return x, levels.c_noise if conditioned else None

        return make

    @staticmethod
    def sigmas() -> list[float]:
        return karras_sigmas(N_LEVELS).tolist()


def clean_level(protocol: str) -> int | str:
    """The evaluation input of ``--clean-eval``: the lowest trained Karras level, or the reference code's."""
    return "reference" if protocol == "reference" else CLEAN_LEVEL


@functools.cache
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1),
        torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1),
    )


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) images in [0, 1] to the ImageNet-normalised input the ResNets expect."""
    mean, std = _imagenet_stats(x.device)
    return (x - mean) / std


def reopen_source(store: LatentStore) -> Source:
    """The dataset a store was encoded from, as its manifest records how to open it."""
    args = store.manifest["dataset"].get("open_args")
    if args is None:
        raise StoreError(
            f"{store.path}: the manifest does not record how to reopen its images "
            "(dataset.open_args); re-encode it with this engine version"
        )
    args = dict(args)
    return open_source(args.pop("spec"), **args)


def default_image_size(store: LatentStore) -> int:
    """The paper's 256 px, or the store's image size when smaller."""
    return min(IMAGE_SIZE, int(store.manifest["image_size"]))


class ImageInputs:
    """uint8 (N, 3, S, S) images on the device, indexed by a selection's sample ids."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    @classmethod
    def cache(
        cls,
        store: LatentStore,
        selection: Selection,
        image_size: int,
        device: torch.device,
        reconstructions: bool = False,
        batch: int = 64,
    ) -> ImageInputs:
        """The selection's images, resized once: the originals from the store's source, or the store's
        reconstructions (`engine encode --reconstructions`). The memory is printed first."""
        names, rows = selection.locate(np.arange(selection.size))
        what = "reconstructions" if reconstructions else "images"
        need = selection.size * 3 * image_size**2
        print(
            f"caching {selection.size} {what} of {selection.role} at {image_size} px on {device}: "
            f"{need / 2**30:.2f} GiB"
        )
        read = _reconstructions(store) if reconstructions else _originals(store, image_size)
        images = torch.empty((selection.size, 3, image_size, image_size), dtype=torch.uint8, device=device)
        for lo in tqdm(range(0, selection.size, batch), desc=f"{what} {selection.role}", unit="batch"):
            x = read(names[lo : lo + batch], rows[lo : lo + batch])
            if x.shape[-1] != image_size:
                x = (resize(x.float() / 255, image_size) * 255).round().clamp(0, 255).to(torch.uint8)
            images[lo : lo + len(x)] = x.to(device)
        return cls(images)

    def clean(self, ids: torch.Tensor) -> torch.Tensor:
        """Normalised float images of ``ids``, as evaluation sees them."""
        return imagenet_normalise(self.images[ids.to(self.images.device)].float() / 255)

    def eval_input(self, batch) -> tuple[torch.Tensor, None]:
        """(x, c_noise) of an evaluation batch: the clean images, and no noise level."""
        return self.clean(batch.ids), None

    def augmented(self, ids: torch.Tensor, seed: int) -> torch.Tensor:
        """Normalised float images of ``ids`` with the paper's random flip and rotation, drawn from ``seed``."""
        x = flip_rotate(self.images[ids.to(self.images.device)].float() / 255, seed)
        return imagenet_normalise(x)


def _originals(store: LatentStore, image_size: int):
    """(split names, rows) -> uint8 (B, 3, S, S) images of the source the store was encoded from."""
    source = reopen_source(store)

    def read(names: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        x = to_model_input([source.image(str(n), int(r)) for n, r in zip(names, rows)], image_size, (0.0, 1.0))
        return (x * 255).round().to(torch.uint8)

    return read


def _reconstructions(store: LatentStore):
    """(split names, rows) -> uint8 (B, 3, S, S) reconstructions the store holds."""
    record = store.manifest.get("reconstructions") or {}
    if not record.get("complete"):
        raise StoreError(
            f"{store.path}: no reconstructions (or an unfinished `engine encode --reconstructions`); "
            f"add them with `engine encode --reconstructions --out {store.path}`"
        )
    splits = {name: store.split(name) for name in store.splits}
    held: dict = {}  # (split, block) -> its rows: a selection lists rows in block order, so each block is read once

    def row(name: str, r: int) -> np.ndarray:
        split = splits[name]
        key = (name, r // split.block)
        if key not in held:
            held.clear()
            lo = key[1] * split.block
            held[key] = split.read_derived("reconstructions", lo, min(lo + split.block, split.size))
        return held[key][r % split.block]

    def read(names: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([row(str(n), int(r)) for n, r in zip(names, rows)]))

    return read


def flip_rotate(x: torch.Tensor, seed: int, max_degrees: float = 15.0) -> torch.Tensor:
    """Horizontal flip with p=0.5 and a rotation uniform in +-max_degrees, per sample, on x's device.

    The draws come from a generator on x's device, so a CUDA step makes no host-to-device copy and no sync (the
    draws differ between devices, each deterministic from ``seed``)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    b = x.shape[0]
    angle = (torch.rand(b, generator=g, device=x.device) * 2 - 1) * math.radians(max_degrees)
    flip = torch.where(torch.rand(b, generator=g, device=x.device) < 0.5, -1.0, 1.0)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros(b, device=x.device)
    theta = torch.stack([torch.stack([cos * flip, -sin, zero], 1), torch.stack([sin * flip, cos, zero], 1)], 1).to(
        x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
