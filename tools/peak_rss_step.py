"""Peak RSS of two bench training steps (`bench.train_steps.make_step`: the engine's objective and train_step) of
one latent model in one memory mode, in a fresh process: plain against lean on a CPU, where the allocator keeps no
peak counter of its own.

    python tools/peak_rss_step.py --model convnext-t-film --shape flux2-512 --batch 64 --memory lean

Run each mode in its own process (the peak is the process's); the figure includes torch, the model, Adam's state
and the two resident input batches, printed apart as "before the steps".
"""

from __future__ import annotations

import argparse
import resource

import torch

from bench.train_steps import StepOptions, latent_case, make_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="convnext-t-film")
    p.add_argument("--shape", default="flux2-512", help="a latent shape name, e.g. flux2-512 (32x64x64)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--memory", choices=("plain", "lean"), default="plain")
    args = p.parse_args()
    torch.manual_seed(0)
    options = StepOptions(torch.device("cpu"), memory=args.memory)
    step, _ = make_step(latent_case(args.model, args.shape), args.batch, options)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(2):
        step(i)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"{args.model} @ {args.shape}, batch {args.batch}, memory={args.memory}: peak RSS {after / 2**20:.2f} GiB "
        f"(before the steps: {before / 2**20:.2f} GiB)"
    )


if __name__ == "__main__":
    main()
