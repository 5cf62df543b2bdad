"""Encode throughput (images/s) of an autoencoder, through the same `Autoencoder.encode` as `engine encode`.

    python tools/measure_encode_speed.py                                   # the default, 64 px
    python tools/measure_encode_speed.py --random-init sd --image-size 256 --images 4 --batch-size 2

--random-init FAMILY times a family's full-size architecture with seeded random weights (no pretrained
weights reach this machine; speed does not depend on the weight values). Synthetic inputs, so this is
model-bound: image decoding and store writes are not included. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time

import torch

from engine.autoencoders import FAMILIES, load_autoencoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", default=None, help="any load_autoencoder spec (default: the shipped default)")
    parser.add_argument("--random-init", default=None, choices=sorted(FAMILIES), help="time a family's architecture")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2048, help="images per timed repeat")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    ae = load_autoencoder(args.autoencoder, device=args.device)
    if args.random_init:
        family = FAMILIES[args.random_init]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            import diffusers

            module = getattr(diffusers, family.diffusers_class)(**family.config)
        module.to(args.device).eval().requires_grad_(False)
        # encode() only uses the module: swap it in, and say plainly that these weights are random.
        ae = dataclasses.replace(ae, module=module, family=f"{family.name} (random init)", pretrained=False)

    batch = torch.rand(args.batch_size, 3, args.image_size, args.image_size) * 2 - 1
    ae.encode(batch[:1])  # warm-up: allocator, kernels, lazy inits
    rates = []
    for _ in range(args.repeats):
        done, start = 0, time.perf_counter()
        while done < args.images:
            n = min(args.batch_size, args.images - done)
            mode, _ = ae.encode(batch[:n])
            done += n
        if mode.is_cuda:
            torch.cuda.synchronize()
        rates.append(done / (time.perf_counter() - start))
    print(
        json.dumps(
            {
                "autoencoder": ae.family,
                "pretrained": ae.pretrained,
                "image_size": args.image_size,
                "latent_shape": list(ae.latent_shape(args.image_size)),
                "batch_size": args.batch_size,
                "images_per_repeat": args.images,
                "repeats": args.repeats,
                "images_per_s_median": round(statistics.median(rates), 2),
                "images_per_s_all": [round(r, 2) for r in rates],
                "device": str(args.device),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "cpu": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
