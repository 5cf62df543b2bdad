"""The device's matmul rate, measured, to set a step's FLOPs against (they are counted by bench.flop_count).

One square matmul, not the hardware's peak: on CPU a convolution can run faster than an n=1024 matmul, so a
step's share of it may exceed 100 % (reports call it "% of matmul").

The peak is measured, not looked up: a large bf16 matmul on GPU (tensor cores, what the models run in under
autocast), an fp32 matmul on CPU (what they run in there), timed in the same process as the steps.
"""

from __future__ import annotations

import time

import torch

from bench.timing import quartiles, sync


def matmul_peak(device: torch.device, n: int | None = None, repeats: int = 5) -> dict:
    """FLOP/s of an n x n @ n x n matmul: bf16 on CUDA (n=8192), fp32 on CPU (n=1024); median of ``repeats``."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    inner = 20 if cuda else 1
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        rates.append(2 * n**3 * inner / (time.perf_counter() - start))
    q1, median, q3 = quartiles(rates)
    return {"flop_per_s": median, "iqr": [q1, q3], "n": n, "dtype": str(dtype).removeprefix("torch.")}
