"""`bench fidelity`: how faithfully autoencoders reconstruct the default benchmark's images.

Each autoencoder encodes the split as `engine encode` would (the same resize and input range), the latents
are cast to fp16 as a store keeps them, decoded, and compared with the images: PSNR and SSIM from
torchmetrics (engine.autoencoders.fidelity). The shipped default's training record (command, steps,
wall time) rides along, so the README's figure names how the weights were made.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from bench import environment

SCHEMA = "latent-engine/fidelity/1"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench fidelity", description=__doc__.splitlines()[0])
    p.add_argument(
        "--autoencoder", action="append", default=None, help="repeatable; default: default and default-untrained"
    )
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--image-size", type=int, default=64, help="the synthetic benchmark's size (its native 64 px)")
    p.add_argument("--images", type=int, default=None, help="the first N images of the split (default: all)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/fidelity-<device>.json")
    return p.parse_args(argv)


def measure(spec: str, source, split: str, image_size: int, n: int, batch: int, device: torch.device) -> dict:
    from engine.autoencoders import load_autoencoder
    from engine.autoencoders.fidelity import psnr_ssim, to_unit
    from engine.sources.preprocess import to_model_input

    ae = load_autoencoder(spec, device=device)
    recon, truth = [], []
    for lo in tqdm(range(0, n, batch), desc=f"fidelity {spec}", unit="batch", file=sys.stderr):
        x = to_model_input([source.image(split, i) for i in range(lo, min(lo + batch, n))], image_size)
        latents = ae.encode(x)[0].half()  # as a store keeps them
        recon.append(to_unit(ae.decode(latents), ae.input_range).cpu())
        truth.append(to_unit(x, ae.input_range))
    return {
        "autoencoder": ae.family,
        "source": ae.source,
        "pretrained": ae.pretrained,
        "latent_shape": list(ae.latent_shape(image_size)),
        **psnr_ssim(torch.cat(recon), torch.cat(truth)),
        **({"training": ae.training} if ae.training else {}),
    }


def main(argv: list[str]) -> int:
    from engine.autoencoders.registry import DEFAULT_DIR
    from engine.sources import open_source

    args = parse_args(argv)
    device = torch.device(args.device)
    source = open_source(None, image_size=args.image_size)
    n = min(args.images or source.info.split_sizes[args.split], source.info.split_sizes[args.split])
    rows = [
        measure(spec, source, args.split, args.image_size, n, args.batch_size, device)
        for spec in (args.autoencoder or ["default", "default-untrained"])
    ]
    shipped = json.loads((DEFAULT_DIR / "training.json").read_text())
    report = {
        "schema": SCHEMA,
        "command": " ".join(["bench", "fidelity", *argv]),
        "device": environment.device_name(device),
        "device_type": device.type,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": environment.versions(device.type == "cuda"),
        "dataset": f"synthetic-cxr seed 0 (SYNTHETIC), {args.split} split, first {n} images, {args.image_size} px",
        "metric": "torchmetrics: PSNR per image (data range 1, mean and lowest), SSIM (mean); latents cast to fp16",
        "rows": rows,
        "shipped_training": {
            key: shipped[key]
            for key in ("command", "steps", "batch_size", "threads", "wall_s", "train_s", "weights_bytes")
            if key in shipped
        },
    }
    out = args.out or environment.result_path("fidelity", report["device"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for r in rows:
        print(f"{r['autoencoder']}: PSNR {r['psnr_db']:.2f} dB (lowest {r['psnr_db_min']:.2f}), SSIM {r['ssim']:.4f}")
    print(f"wrote {out}", file=sys.stderr)
    return 0
