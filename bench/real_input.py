"""The input path included: each side's steps fed by the loader it would train from, timed with and without
the step, so data loading and compute are reported apart.

Latent side: `engine encode` writes a zarr store of the synthetic dataset; `engine.loaders.make_loader`
(the loader `engine train` picks) feeds the noise injection and the step. Image side: the same images as
PNG files, decoded and augmented (the paper's flip and 15 degree rotation) per sample in the workers of a
plain torch DataLoader, then copied to the device. zarr and diffusers are imported here only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.environment import kernels_env
from bench.timing import time_windows
from bench.train_steps import NUM_CLASSES, Case, StepOptions, build_net
from bench.train_steps import image_case as image_case_of
from engine.loaders import Batch
from engine.losses import RECIPES
from engine.training.inputs import LatentInputs, flip_rotate, imagenet_normalise
from engine.training.objective import LatentObjective, TrainingLoss, autocast, train_step


class PngImages(torch.utils.data.Dataset):
    """Decode, augment and normalise one PNG per sample: the usual image-space input pipeline."""

    def __init__(self, files: list[Path], labels: np.ndarray):
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.array(Image.open(self.files[i]).convert("RGB"))).permute(2, 0, 1).float() / 255
        x = flip_rotate(x[None], seed=int(torch.randint(0, 2**31, ()).item()))[0]
        return imagenet_normalise(x), int(self.labels[i])


class LoadedImages:
    """The image objective for images the DataLoader already decoded, flipped and rotated."""

    def __init__(self, x: torch.Tensor, loss: TrainingLoss):
        self.x, self.loss = x, loss

    def __call__(self, net: torch.nn.Module, batch: Batch, step: int) -> torch.Tensor:
        with autocast(self.x.device):
            logits = net(self.x, None)
        return self.loss(logits.float(), batch)


def write_pngs(source, split: str, folder: Path) -> tuple[list[Path], np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(source.info.split_sizes[split]):
        img = (np.clip(source.image(split, i), 0, 1) * 255).round().astype(np.uint8)
        files.append(folder / f"{i:06d}.png")
        Image.fromarray(img).save(files[-1])
    return files, np.asarray(source.labels(split))


def _cycle(make_epoch: Callable[[int], Iterator]) -> Iterator:
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def _loss(device: torch.device) -> TrainingLoss:
    counts = np.full(NUM_CLASSES, 10)
    counts[0] = 100
    return TrainingLoss(RECIPES["ldam-drw"], counts, device=device)


def run_real_input(
    latent_model: str,
    image_model: str,
    image_size: int,
    samples: int,
    batch: int,
    options: Callable[[Case], StepOptions],
    autoencoder: str,
    workers: int,
    timing: dict,
    log=print,
) -> dict:
    """Latent and image steps fed by their real loaders, plus each loader alone; returns rows for the report.

    ``options(case)`` gives each side its step options (device, channels_last) as in the main table."""
    from bench.encode_cost import autoencoder as build_autoencoder
    from engine.encode import EncodeOptions, encode
    from engine.loaders import make_loader, select
    from engine.sources import open_source
    from engine.store import open_store

    device = options(image_case_of(image_model, image_size)).device
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        tmp = Path(tmp)
        sizes = {"train": samples, "val": batch, "test": batch}
        source = open_source(None, image_size=image_size, sizes=sizes, cache_dir=tmp / "cache")
        ae = build_autoencoder(autoencoder, device)
        log(f"real input: encoding {samples} synthetic {image_size} px images with {ae.family} (not timed)")
        encode(
            source,
            ae,
            EncodeOptions(out=tmp / "latents.zarr", image_size=image_size, batch_size=16),
            log=lambda *_: None,
        )
        store = open_store(tmp / "latents.zarr")
        shape = tuple(store.manifest["latent_shape"])
        stats = store.manifest["channel_stats"]
        loader = make_loader(store, select(store, "train"), batch, device, seed=0, log=lambda *_: None)
        inputs = LatentInputs(channel_mean=stats["mean"], channel_std=stats["std"], device=device)

        def latent_epoch(epoch: int) -> Iterator[Batch]:
            loader.set_epoch(epoch)
            return iter(loader)

        files, labels = write_pngs(source, "train", tmp / "png")
        images = torch.utils.data.DataLoader(
            PngImages(files, labels),
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
        latent_case = Case("latent", latent_model, f"{autoencoder}-{image_size}", shape)
        image_case = Case("image", image_model, f"{image_size}px", (3, image_size, image_size))
        nets = {
            "latent": build_net(latent_case, options(latent_case)),
            "image": build_net(image_case, options(image_case)),
        }
        kernels = options(latent_case).kernels
        loss_fn = _loss(device)
        lean_input = options(latent_case).lean_input
        objective = LatentObjective(inputs, loss_fn, nets["latent"].noise_conditioned, regenerate_input=lean_input)

        def latent_step(batches: Iterator[Batch]):
            opt = torch.optim.Adam(nets["latent"].parameters(), lr=1e-4)
            runner = options(latent_case).casting_weights_once(nets["latent"])

            def step(i: int) -> torch.Tensor:
                with kernels_env(kernels):
                    return train_step(runner, opt, objective, next(batches), i)

            return step

        def image_step(batches: Iterator):
            opt = torch.optim.Adam(nets["image"].parameters(), lr=1e-4)

            def step(i: int) -> torch.Tensor:
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                b = Batch(
                    None, y, torch.arange(len(y), device=device), torch.ones(len(y), dtype=torch.bool, device=device)
                )
                return train_step(nets["image"], opt, LoadedImages(x, loss_fn), b, i)

            return step

        def loader_only(batches: Iterator):
            def step(i: int) -> torch.Tensor:
                b = next(batches)
                x = b.latents if isinstance(b, Batch) else b[0].to(device, non_blocking=True)
                return x.flatten()[:1].float()  # touch it; finite, as time_windows checks

            return step

        for space, case, epoch_fn in (
            ("latent", latent_case, latent_epoch),
            ("image", image_case, lambda e: iter(images)),
        ):
            for what, make in (
                ("loader only", loader_only),
                ("loader + step", latent_step if space == "latent" else image_step),
            ):
                log(f"real input: {space} {what}")
                t = time_windows(make(_cycle(epoch_fn)), batch, device, **timing)
                rows.append(
                    {
                        "space": space,
                        "case": case.name,
                        "model": case.model,
                        "shape": list(case.shape),
                        "what": what,
                        "batch": batch,
                        "samples": samples,
                        "input_path": f"make_loader ({loader.__class__.__name__}) on a zarr store from engine encode"
                        if space == "latent"
                        else f"PNG decode + flip/rotate in a torch DataLoader, {workers} workers",
                        **t,
                    }
                )
    return {"autoencoder": autoencoder, "image_size": image_size, "rows": rows}
