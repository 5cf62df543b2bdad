"""What the latent side pays up front: autoencoder encode throughput, and the epochs after which it has paid off.

A registered family is timed with its full-size architecture and seeded random weights: no pretrained
weights reach the benchmark machines, and the speed of a network does not depend on its weight values.
Inputs are synthetic images already in memory, so decoding and store writes are not included.
diffusers is imported here only, when this part runs.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from bench.timing import quartiles, sync


def autoencoder(family: str, device: torch.device):
    """An `engine.autoencoders.Autoencoder` of ``family``: the offline defaults as they are, any other with random
    weights (the cost of encoding does not depend on them)."""
    from engine.autoencoders import DEFAULT_FAMILY, FAMILIES, UNTRAINED_FAMILY, load_autoencoder

    if family not in FAMILIES:
        raise ValueError(f"unknown autoencoder family {family!r}; known: {', '.join(FAMILIES)}")
    ae = load_autoencoder(UNTRAINED_FAMILY, device=device)
    if family in (DEFAULT_FAMILY, UNTRAINED_FAMILY):
        return load_autoencoder(family, device=device)
    import diffusers

    info = FAMILIES[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = getattr(diffusers, info.diffusers_class)(**info.config)
    module.to(device).eval().requires_grad_(False)
    return dataclasses.replace(
        ae,
        module=module,
        family=f"{family} (random weights)",
        pretrained=False,
        latent_channels=info.latent_channels,
        downsample=info.downsample,
    )


def encode_throughput(
    family: str, image_size: int, device: torch.device, batch: int, images: int, repeats: int = 3
) -> dict:
    """images/s of `Autoencoder.encode` (the call `engine encode` makes) on random images in [-1, 1]."""
    ae = autoencoder(family, device)
    x = torch.rand(batch, 3, image_size, image_size, device=device) * 2 - 1
    ae.encode(x[:1])  # warm-up: allocator, cuDNN autotuning, lazy inits
    rates = []
    for _ in range(repeats):
        sync(device)
        done, start = 0, time.perf_counter()
        while done < images:
            n = min(batch, images - done)
            ae.encode(x[:n])
            done += n
        sync(device)
        rates.append(done / (time.perf_counter() - start))
    q1, median, q3 = quartiles(rates)
    return {
        "family": ae.family,
        "pretrained": ae.pretrained,
        "image_size": image_size,
        "latent_shape": list(ae.latent_shape(image_size)),
        "batch": batch,
        "images_per_repeat": images,
        "images_per_s": median,
        "iqr": [q1, q3],
        "note": "full-size architecture, random weights: speed does not depend on weight values"
        if not ae.pretrained
        else "the engine's seeded default autoencoder",
    }


def break_even_epochs(dataset_size: int, encode_per_s: float, latent_per_s: float, image_per_s: float) -> float:
    """Smallest E with encode_once + E * latent_epoch < E * image_epoch; inf when latent epochs are not faster."""
    encode_s, latent_s, image_s = dataset_size / encode_per_s, dataset_size / latent_per_s, dataset_size / image_per_s
    if latent_s >= image_s:
        return math.inf
    return encode_s / (image_s - latent_s)
