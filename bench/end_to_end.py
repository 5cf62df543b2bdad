"""The end-to-end pairing: each side as a user trains it, input pipeline included, predicted for a GPU.

Image side: PNG (or JPEG) files of the source size (512 px) read, decoded, resized to the classifier's size
(256 px), flipped and rotated (the paper's 15 degrees, ``engine.training.inputs.flip_rotate``) and normalised
in the workers of a torch DataLoader, 8 of them by default as in the paper's code. Its rate is measured here,
one worker on this CPU over a few hundred files written to a temporary folder, and scaled by the number of
workers (one core each: the GPU host is assumed to have them free). Latent side: the engine's own loader as
``engine train`` feeds a store that fits the device (``engine.loaders.resident``): cached there once, every
batch one ``index_select`` on the device, its rate the calibrated time of that gather (a store too large for
the device streams instead: that loader's rate on this CPU is measured and reported beside it). Each side's step
rate is bench.predict's calibrated one on the GPU; a side runs at ``min(loader, step)``. Predicted, never
measured: the decode rates are this CPU's, the gather and step rates a model's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.calibrated import CALIBRATION
from bench.pairing import END_TO_END
from bench.roofline import gpu
from engine.training.inputs import flip_rotate, imagenet_normalise

WORKERS = 8  # the paper's code
SOURCE_PX, IMAGE_PX = 512, 256


class DecodeResizeAugment(torch.utils.data.Dataset):
    """One file per sample: decode, resize to ``size``, flip and rotate, normalise."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = Image.open(self.files[i]).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        return imagenet_normalise(flip_rotate(x[None], seed=i)[0])


def write_images(folder: Path, count: int, px: int, suffix: str, seed: int = 0) -> list[Path]:
    """``count`` px x px images like photographs to a codec (smooth shapes and mild noise, not white noise,
    which no codec compresses), as ``suffix`` files (.png or .jpg)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px] / px
    files = []
    for i in range(count):
        fx, fy, phase = rng.uniform(1, 6, 3)
        base = 0.5 + 0.25 * np.sin(2 * np.pi * (fx * xx + phase)) * np.cos(2 * np.pi * fy * yy)
        rgb = np.stack([base, base**1.3, 1 - base], -1) + rng.normal(0, 0.03, (px, px, 3))
        files.append(folder / f"{i:05d}{suffix}")
        Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(files[-1])
    return files


def decode_rate_per_worker(
    suffix: str = ".png", count: int = 256, source_px: int = SOURCE_PX, size: int = IMAGE_PX
) -> float:
    """Images/s one DataLoader worker decodes, resizes and augments on this CPU (the first batch, which
    starts the worker, untimed)."""
    with tempfile.TemporaryDirectory(prefix="bench-end-to-end-") as tmp:
        files = write_images(Path(tmp), count, source_px, suffix)
        loader = torch.utils.data.DataLoader(DecodeResizeAugment(files, size), batch_size=32, num_workers=1)
        batches = iter(loader)
        next(batches)
        n, t = 0, time.perf_counter()
        for x in batches:
            n += len(x)
        return n / (time.perf_counter() - t)


def latent_loader_rate(shape: tuple[int, int, int], samples: int = 2048, batch: int = 256) -> float:
    """Samples/s the engine's loader delivers from a zarr store of ``samples`` fp16 latents on this CPU."""
    from bench.loaders import time_loader, write_synthetic_store
    from engine.store import open_store

    with tempfile.TemporaryDirectory(prefix="bench-end-to-end-") as tmp:
        path = write_synthetic_store(Path(tmp) / "latents.zarr", "zarr", samples, shape)
        timed = time_loader(open_store(path), "auto", batch, torch.device("cpu"), 3, None, 4)
        return float(timed["samples_per_s"])


def resident_gather_rate(shape: tuple[int, int, int], device: str, batch: int = 256) -> float:
    """Samples/s the resident loader delivers on ``device``, predicted: a batch is one eager ``index_select`` of
    the cached fp16 latents (each sample's bytes read and written once) at the calibrated bandwidth."""
    _, spec = gpu(device)
    moved = 2 * batch * 2 * int(np.prod(shape))
    return batch / CALIBRATION.step_time([("aten.index_select", 0, moved, torch.float16)], spec)


def side(predicted: dict, loader: str, loader_samples_per_s: float) -> dict:
    """One side of the pairing: a bench.predict row fed by ``loader`` at ``loader_samples_per_s``, running at
    min(loader, calibrated step)."""
    step = predicted["calibrated_samples_per_s"]
    return {
        "label": "predicted",
        "pairing": END_TO_END,
        "case": predicted["case"],
        "space": predicted["space"],
        "memory": predicted["memory"],
        "device": predicted["device"],
        "batch": predicted["batch"],
        "loader": loader,
        "loader_samples_per_s": loader_samples_per_s,
        "step_samples_per_s": step,
        "samples_per_s": min(loader_samples_per_s, step),
        "bound": "loader" if loader_samples_per_s < step else "step",
        "peak_bytes": predicted["peak_bytes"],
    }


def ratio(latent: dict, image: dict) -> dict:
    """Latent/image samples/s and image/latent peak memory of two sides (of one device)."""
    return {
        "label": "predicted",
        "pairing": END_TO_END,
        "device": latent["device"],
        "latent": f"{latent['case']} ({latent['memory']})",
        "image": f"{image['case']} ({image['memory']}, {image['loader']})",
        "throughput_ratio": latent["samples_per_s"] / image["samples_per_s"],
        "memory_ratio": image["peak_bytes"] / latent["peak_bytes"],
    }


def predict_end_to_end(
    devices: tuple[str, ...] = ("h200-sxm",),
    latent_models: tuple[str, ...] = ("convnext-t-film", "convnext-atto-film"),
    shape: str = "flux2-512",
    image_model: str = "resnet50",
    workers: int = WORKERS,
    images: int = 256,
    measured: dict | None = None,
) -> dict:
    """Sides and ratios of the end-to-end pairing on each of ``devices``: each latent model (plain and lean) from
    its store resident on the device, against the image model at 256 px (stock, and with its residual blocks
    recomputed) from ``workers``-worker PNG and JPEG pipelines; with the per-worker decode rates and the
    streaming loader's rate measured here, once for every device, or taken from ``measured`` (an earlier result's
    end-to-end part: what a refresh of its predictions keeps, as measured on the machine that wrote it)."""
    from bench.predict import predict_case
    from bench.train_steps import latent_shape

    dims = latent_shape(shape)
    if measured is not None:
        per_worker = {f".{kind}": rate for kind, rate in measured["decode_images_per_s_per_worker"].items()}
        streamed = measured["streamed_loader_samples_per_s"]
    else:
        per_worker = {suffix: decode_rate_per_worker(suffix, images) for suffix in (".png", ".jpg")}
        streamed = latent_loader_rate(dims)
    sides, ratios, gathers = [], [], {}
    for device in devices:
        gathers[device] = resident_gather_rate(dims, device)
        latents = [
            side(
                predict_case(model, shape, device=device, memory=m),
                "engine resident loader (device gather)",
                gathers[device],
            )
            for model in latent_models
            for m in ("plain", "lean")
        ]
        images_ = [
            side(
                predict_case(image_model, (3, IMAGE_PX, IMAGE_PX), device=device, memory=m),
                f"{workers}-worker DataLoader of {SOURCE_PX} px {suffix[1:].upper()} files",
                workers * rate,
            )
            for m in ("plain", "lean")
            for suffix, rate in per_worker.items()
        ]
        sides += latents + images_
        ratios += [ratio(lat, img) for lat in latents for img in images_]
    return {
        "label": "predicted",
        "pairing": END_TO_END,
        "workers": workers,
        "decode_images_per_s_per_worker": {suffix[1:]: rate for suffix, rate in per_worker.items()},
        "resident_gather_samples_per_s": gathers,
        "streamed_loader_samples_per_s": streamed,
        "sides": sides,
        "ratios": ratios,
    }
