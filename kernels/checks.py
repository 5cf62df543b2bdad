"""Input checks shared by the fused normalisation kernels, so both reject bad operands with the same errors."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def batch_and_channels(op: str, x: torch.Tensor) -> tuple[int, int]:
    """(B, C) of x, which must be (B, C, *spatial)."""
    if x.dim() < 3:
        raise ValueError(f"{op}: x must be (B, C, *spatial), got shape {tuple(x.shape)}")
    return x.shape[0], x.shape[1]


def check_operands(op: str, x: torch.Tensor, operands: tuple[tuple[str, torch.Tensor, tuple[int, ...]], ...]) -> None:
    """Each (name, tensor, expected shape) has that shape, a float dtype the kernels take, and x's device."""
    for name, t, shape in operands:
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {shape} for x {tuple(x.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} is {t.dtype}; use float32, float16 or bfloat16")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}; put all on one device")
