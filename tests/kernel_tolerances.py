"""How close a kernel must come to its fp64 reference: a relative-error bound per dtype, for the kernel tests."""

import torch

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}  # bounds on rel(out, ref)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref||, with a promoted to fp64 first."""
    return ((a.double() - ref).norm() / ref.norm()).item()
