"""Train the embedded default's small KL autoencoder on this CPU, deterministically from a seed.

    python tools/train_default_autoencoder.py --out runs/default-ae            # 3000 steps: about 12 minutes on 2 cores
    python tools/train_default_autoencoder.py --out /tmp/ae --steps 200        # a smoke run

A diffusers AutoencoderKL (the class and loading path the real families use: SD-style encoder and decoder
blocks, a diagonal-Gaussian posterior), KL-regularised with SD's weight relative to its reconstruction term,
trained with L1 + a small SSIM term (torchmetrics; nothing downloaded). It stands in for an autoencoder
pretrained elsewhere: it never sees the default benchmark (synthetic-cxr seed 0). Its images are drawn by the
same generator under other seeds (DATA_SEED_BASE + k) and widened by cheap deterministic augmentations
(flips, shift/zoom/rotation, gamma/contrast/brightness, blur, extra noise, added low-frequency texture).

Deterministic from --seed at a fixed --threads (the thread count changes float summation order): the model's
init, the data pool, every augmentation, the batch order and the posterior samples all come from it.
Writes to --out: config.json + diffusion_pytorch_model.safetensors (save_pretrained; loads with
`--autoencoder DIR`), training.json (command, settings, data, final train PSNR, wall time, and PSNR/SSIM of
D(E(x)) on the default benchmark's test split), and a JSONL log of step, loss and PSNR (--log, default
OUT/log.jsonl).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.sources import (  # noqa: E402  (after the sys.path line above: the script runs from a checkout)
    open_source,
    synthetic_cxr,
)
from engine.sources.preprocess import to_model_input  # noqa: E402

DATA_SEED_BASE = 1_000_003  # synthetic-cxr seeds DATA_SEED_BASE + k: never the benchmark's seed 0 (nor small seeds)
CHUNK = 2400  # images per data seed (one "train" split of the generator)
SD_KL_WEIGHT = 1e-6  # SD's kl_weight, against a reconstruction loss summed over pixels
BENCHMARK = {"dataset": "synthetic-cxr", "seed": 0, "split": "test", "images": 800}


def architecture(
    block_out_channels: list[int],
    latent_channels: int,
    layers_per_block: int,
    groups: int,
    attention: bool,
    image_size: int,
) -> dict:
    """An SD-style AutoencoderKL config, scaled down: factor 2 ** (levels - 1)."""
    levels = len(block_out_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(block_out_channels),
        "layers_per_block": layers_per_block,
        "act_fn": "silu",
        "latent_channels": latent_channels,
        "norm_num_groups": groups,
        "sample_size": image_size,
        "scaling_factor": 1.0,  # replaced by 1 / std of the trained latents, as SD chose its 0.18215
        "mid_block_add_attention": attention,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--out", required=True, type=Path, help="output directory (save_pretrained + training.json)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the model, the data, the augmentations and the order")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=64, help="the default benchmark's image size")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (fixed: part of what makes runs repeatable)")
    ap.add_argument("--log", type=Path, default=None, help="JSONL log of step, loss, PSNR (default OUT/log.jsonl)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument(
        "--val-every",
        type=int,
        default=500,
        help="PSNR on held-out generator images (not the benchmark) every N steps; 0: only at the end",
    )
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (warmup, then cosine to 2%%)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ssim-weight", type=float, default=0.1, help="weight of (1 - SSIM) beside L1")
    ap.add_argument(
        "--kl-weight",
        type=float,
        default=SD_KL_WEIGHT,
        help="weight of the KL summed over the latent, against L1 summed over pixels (SD's ratio)",
    )
    ap.add_argument("--block-out-channels", default="16,32,64", help="channels per level; factor 2 ** (levels - 1)")
    ap.add_argument("--latent-channels", type=int, default=4)
    ap.add_argument("--layers-per-block", type=int, default=1)
    ap.add_argument("--norm-groups", type=int, default=8)
    ap.add_argument("--attention", action="store_true", help="self-attention in the mid block (SD has it)")
    ap.add_argument(
        "--pool-images",
        type=int,
        default=24000,
        help="generator images rendered up front (CHUNK per data seed), augmented afresh every draw",
    )
    ap.add_argument("--augment", type=float, default=1.0, help="scale of all augmentation probabilities (0: none)")
    ap.add_argument(
        "--eval-images",
        type=int,
        default=BENCHMARK["images"],
        help="how many of the benchmark's test images to evaluate at the end (0: skip)",
    )
    args = ap.parse_args(argv)
    args.block_out_channels = [int(c) for c in str(args.block_out_channels).split(",")]
    factor = 2 ** (len(args.block_out_channels) - 1)
    if args.image_size % factor:
        ap.error(f"--image-size {args.image_size} is not a multiple of the factor {factor}")
    if args.steps < 1 or args.batch_size < 1 or args.threads < 1:
        ap.error("--steps, --batch-size and --threads must be >= 1")
    return args


# ----------------------------------------------------------------------------------------------- data


def render_pool(n: int, size: int, progress) -> np.ndarray:
    """(n, size, size) uint8 generator images from seeds DATA_SEED_BASE + k, stored at 8 bits like the benchmark."""
    pool = np.empty((n, size, size), np.uint8)
    for start in range(0, n, CHUNK):
        k = start // CHUNK
        count = min(CHUNK, n - start)
        for lo in range(0, count, 400):
            idx = np.arange(lo, min(lo + 400, count))
            images = synthetic_cxr.render(DATA_SEED_BASE + k, "train", idx, size, CHUNK)
            pool[start + lo : start + lo + len(idx)] = np.round(images * 255).astype(np.uint8)
            progress.update(len(idx))
    return pool


def held_out(n: int, size: int) -> np.ndarray:
    """Generator images for the validation log: the data seeds' own "val" split, never trained on, never augmented."""
    images = synthetic_cxr.render(DATA_SEED_BASE, "val", np.arange(n), size, max(n, 400))
    return np.round(images * 255).astype(np.float32) / 255


def _gaussian_kernels(sigmas: np.ndarray) -> torch.Tensor:
    """(B, 1, 5, 5) normalised Gaussian kernels."""
    r = torch.arange(-2, 3, dtype=torch.float32)
    s = torch.from_numpy(sigmas.astype(np.float32))[:, None]
    k1 = torch.exp(-(r[None] ** 2) / (2 * s**2))
    k1 = k1 / k1.sum(1, keepdim=True)
    return (k1[:, :, None] * k1[:, None, :])[:, None]


def augment(x: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> augmented, requantised to 8 bits. Every draw is made whether used or not, so the
    stream of random numbers does not depend on the images."""
    b, _, h, w = x.shape

    def p(q: float) -> np.ndarray:
        return rng.random(b) < q * strength

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, b)

    hflip, vflip = p(0.5), p(0.1)
    geo, zoom, rot, tx, ty = p(0.6), u(0.85, 1.2), u(-0.14, 0.14), u(-0.1, 0.1), u(-0.1, 0.1)
    tone, gamma, gain, offset = p(0.7), np.exp(u(-0.35, 0.35)), u(0.8, 1.2), u(-0.08, 0.08)
    tex, tex_amp, tex_grid = p(0.3), u(0.0, 0.06), rng.standard_normal((b, 1, 7, 7)).astype(np.float32)
    blur, sigma = p(0.2), u(0.4, 1.1)
    noise, noise_std, noise_field = p(0.3), u(0.0, 0.02), rng.standard_normal((b, 1, h, w)).astype(np.float32)
    if strength <= 0:
        return x
    x = torch.where(torch.from_numpy(hflip)[:, None, None, None], x.flip(-1), x)
    x = torch.where(torch.from_numpy(vflip)[:, None, None, None], x.flip(-2), x)
    if geo.any():
        c, s = np.cos(rot) / zoom, np.sin(rot) / zoom
        theta = torch.from_numpy(np.stack([np.stack([c, -s, tx], 1), np.stack([s, c, ty], 1)], 1).astype(np.float32))
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = torch.where(torch.from_numpy(geo)[:, None, None, None], moved, x)
    if tone.any():

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a.astype(np.float32))[:, None, None, None]

        toned = (t(gain) * x.clamp(0, 1) ** t(gamma) + t(offset)).clamp(0, 1)
        x = torch.where(torch.from_numpy(tone)[:, None, None, None], toned, x)
    if tex.any():
        field = F.interpolate(torch.from_numpy(tex_grid), size=(h, w), mode="bicubic", align_corners=False)
        amp = torch.from_numpy((tex_amp * tex).astype(np.float32))[:, None, None, None]
        x = (x + amp * field).clamp(0, 1)
    if blur.any():
        kernels = _gaussian_kernels(sigma)
        blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect").transpose(0, 1), kernels, groups=b).transpose(0, 1)
        x = torch.where(torch.from_numpy(blur)[:, None, None, None], blurred, x)
    if noise.any():
        std = torch.from_numpy((noise_std * noise).astype(np.float32))[:, None, None, None]
        x = (x + std * torch.from_numpy(noise_field)).clamp(0, 1)
    return torch.round(x * 255) / 255


def as_input(gray01: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, 3, H, W) in [-1, 1], as engine.sources.preprocess.to_model_input feeds it."""
    return gray01.expand(-1, 3, -1, -1) * 2 - 1


# ----------------------------------------------------------------------------------------------- metrics


def reconstruct(vae, x: torch.Tensor, batch: int = 100) -> torch.Tensor:
    """D(mode(E(x))) clamped to the input range, in batches, no grad."""
    outs = []
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            z = vae.encode(x[lo : lo + batch]).latent_dist.mode()
            outs.append(vae.decode(z).sample.clamp(-1, 1))
    return torch.cat(outs)


def psnr_ssim(recon: torch.Tensor, target: torch.Tensor) -> dict:
    """Mean per-image PSNR (dB) and SSIM on [0, 1] images (torchmetrics), plus the PSNR of the pooled MSE."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    r, t = (recon + 1) / 2, (target + 1) / 2
    per_image = peak_signal_noise_ratio(r, t, data_range=1.0, dim=(1, 2, 3), reduction="none")
    ssim = structural_similarity_index_measure(r, t, data_range=1.0)
    pooled = peak_signal_noise_ratio(r, t, data_range=1.0)
    return {
        "psnr": round(float(per_image.mean()), 3),
        "psnr_min": round(float(per_image.min()), 3),
        "psnr_pooled": round(float(pooled), 3),
        "ssim": round(float(ssim), 5),
        "images": len(r),
    }


def benchmark_test(vae, image_size: int, n: int) -> dict:
    """PSNR/SSIM of D(E(x)) on the default benchmark's test split, fed exactly as `engine encode` feeds it."""
    source = open_source(None, image_size=image_size, seed=BENCHMARK["seed"])
    images = [source.image(BENCHMARK["split"], i) for i in range(n)]
    x = to_model_input(images, image_size)
    return {**BENCHMARK, **psnr_ssim(reconstruct(vae, x), x)}


# ----------------------------------------------------------------------------------------------- training


def learning_rate(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def main(argv: list[str] | None = None) -> dict:
    """Train as the command line says; the process's thread count and determinism flag are restored after."""
    args = parse_args(argv)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return train(args, argv)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def train(args: argparse.Namespace, argv: list[str] | None) -> dict:
    from diffusers import AutoencoderKL
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )
    from tqdm import tqdm

    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.log or args.out / "log.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()

    with tqdm(total=args.pool_images, desc="render data", unit="img", dynamic_ncols=True) as bar:
        pool = render_pool(args.pool_images, args.image_size, bar)
    val = as_input(torch.from_numpy(held_out(256, args.image_size))[:, None])
    render_s = time.time() - start

    config = architecture(
        args.block_out_channels,
        args.latent_channels,
        args.layers_per_block,
        args.norm_groups,
        args.attention,
        args.image_size,
    )
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**config).train()
    params = sum(p.numel() for p in vae.parameters())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    data_rng = np.random.default_rng([args.seed, 1])
    sample_gen = torch.Generator().manual_seed(args.seed + 1)
    pixels = 3 * args.image_size**2
    order, cursor = data_rng.permutation(len(pool)), 0
    history, last = [], {}

    with open(log_path, "w") as log, tqdm(total=args.steps, desc="train", unit="step", dynamic_ncols=True) as bar:
        for step in range(args.steps):
            if cursor + args.batch_size > len(order):
                order, cursor = data_rng.permutation(len(pool)), 0
            idx = np.sort(order[cursor : cursor + args.batch_size])
            cursor += args.batch_size
            gray = torch.from_numpy(pool[idx].astype(np.float32) / 255)[:, None]
            x = as_input(augment(gray, data_rng, args.augment))

            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args)
            posterior = vae.encode(x).latent_dist
            y = vae.decode(posterior.sample(generator=sample_gen)).sample
            l1 = (y - x).abs().mean()
            ssim = structural_similarity_index_measure((y.clamp(-1, 1) + 1) / 2, (x + 1) / 2, data_range=1.0)
            kl = posterior.kl().mean() / pixels  # SD: KL summed per image vs L1 summed per image; both / pixels here
            loss = l1 + args.ssim_weight * (1 - ssim) + args.kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            if step % args.log_every == 0 or step == args.steps - 1:
                with torch.no_grad():
                    psnr = peak_signal_noise_ratio(
                        (y.clamp(-1, 1) + 1) / 2,
                        (x + 1) / 2,
                        data_range=1.0,
                        dim=(1, 2, 3),
                        reduction="elementwise_mean",
                    )
                last = {
                    "step": step,
                    "loss": round(loss.item(), 6),
                    "l1": round(l1.item(), 6),
                    "ssim": round(ssim.item(), 5),
                    "kl": round(posterior.kl().mean().item(), 3),
                    "psnr": round(float(psnr), 3),
                    "lr": round(learning_rate(step, args), 7),
                    "elapsed_s": round(time.time() - start, 1),
                }
                if args.val_every and (step % args.val_every == 0 or step == args.steps - 1):
                    vae.eval()
                    last["val_psnr"] = psnr_ssim(reconstruct(vae, val), val)["psnr"]
                    vae.train()
                log.write(json.dumps(last) + "\n")
                log.flush()
                history.append(last)
                bar.set_postfix(
                    loss=f"{last['loss']:.4f}",
                    psnr=f"{last['psnr']:.2f}",
                    **({"val": f"{last['val_psnr']:.2f}"} if "val_psnr" in last else {}),
                )
            bar.update(1)
    train_s = time.time() - start - render_s

    vae.eval().requires_grad_(False)
    held = psnr_ssim(reconstruct(vae, val), val)
    # SD's recipe for the scaling factor: 1 / std of the latents, so that the scaled latents have unit variance.
    with torch.no_grad():
        sample = as_input(torch.from_numpy(pool[:1024].astype(np.float32) / 255)[:, None])
        latents = torch.cat([vae.encode(sample[lo : lo + 128]).latent_dist.mode() for lo in range(0, 1024, 128)])
    scaling = float(1 / latents.std())
    vae.register_to_config(scaling_factor=round(scaling, 5))
    vae.save_pretrained(args.out, safe_serialization=True)
    test = benchmark_test(vae, args.image_size, args.eval_images) if args.eval_images else None
    wall = time.time() - start

    weights = args.out / "diffusion_pytorch_model.safetensors"
    record = {
        "command": " ".join(
            ["python", "tools/train_default_autoencoder.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "threads": args.threads,
        "lr": args.lr,
        "warmup": args.warmup,
        "schedule": "linear warmup, cosine to 2%",
        "loss": {
            "l1": 1.0,
            "ssim": args.ssim_weight,
            "kl": args.kl_weight,
            "kl_normalisation": "KL summed over the latent / pixels (3*H*W), beside mean L1: SD's ratio",
        },
        "architecture": {
            "class": "AutoencoderKL",
            **config,
            "scaling_factor": round(scaling, 5),
            "factor": 2 ** (len(args.block_out_channels) - 1),
            "parameters": params,
            "latent_shape": [args.latent_channels, *[args.image_size // 2 ** (len(args.block_out_channels) - 1)] * 2],
        },
        "data": {
            "generator": f"engine.sources.synthetic_cxr v{synthetic_cxr.GENERATOR_VERSION}",
            "seeds": [DATA_SEED_BASE, DATA_SEED_BASE + (args.pool_images - 1) // CHUNK],
            "split": "train",
            "images": args.pool_images,
            "stored": "8-bit",
            "augment_strength": args.augment,
            "augmentations": "hflip 0.5, vflip 0.1; affine 0.6 (zoom 0.85-1.2, rot +-8 deg, shift +-10%); "
            "tone 0.7 (gamma e^+-0.35, gain 0.8-1.2, offset +-0.08); low-freq texture 0.3 "
            "(<=0.06); blur 0.2 (sigma 0.4-1.1); noise 0.3 (std <=0.02); requantised to 8 bits",
            "never": "synthetic-cxr seed 0 (the default benchmark)",
        },
        "final_train": history[-1] if history else {},
        "held_out_generator_val": held,
        "benchmark_test": test,
        "wall_s": round(wall, 1),
        "render_s": round(render_s, 1),
        "train_s": round(train_s, 1),
        "weights_bytes": weights.stat().st_size,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
            "torchmetrics": __import__("torchmetrics").__version__,
            "cpu": platform.processor(),
        },
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        json.dumps(
            {"out": str(args.out), "wall_s": record["wall_s"], "benchmark_test": test, "held_out": held}, indent=None
        )
    )
    return record


if __name__ == "__main__":
    main()
