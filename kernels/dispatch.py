"""Choose the Triton kernel or the torch reference for a call.

By default (``auto``) Triton runs on CUDA tensors and the reference on CPU tensors.
``LATENT_ENGINE_KERNELS`` forces either (``triton`` or ``reference``); forcing ``triton`` on CPU
tensors needs ``TRITON_INTERPRET=1`` (Triton's interpreter), which is how the tests check the
kernels without a GPU while the rest of the suite keeps the fast reference path.
"""
from __future__ import annotations

import os

import torch

ENV_VAR = "LATENT_ENGINE_KERNELS"
_CHOICES = ("auto", "triton", "reference")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(x: torch.Tensor) -> bool:
    """True when the call on ``x`` should run the Triton kernel."""
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{ENV_VAR}={choice!r}: expected one of {', '.join(_CHOICES)}")
    if choice == "reference":
        return False
    runnable = x.is_cuda or _interpreting()
    if choice == "triton":
        if not runnable:
            raise RuntimeError(
                f"{ENV_VAR}=triton but the tensor is on {x.device} and TRITON_INTERPRET is not set; "
                "use a CUDA tensor or set TRITON_INTERPRET=1"
            )
        return True
    return x.is_cuda
