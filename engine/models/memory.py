"""How much a latent model keeps for its backward: the ``memory`` option of every latent model.

``"plain"`` is eager autograd: every op saves what its backward reads. ``"lean"`` computes the same function
with the same parameters (state dicts interchange) but keeps less: ConvNeXt blocks (depthwise conv, norm, MLP,
layer scale, drop and residual add) run as ``kernels.convnext_block`` (only the block's input kept, in the compute
dtype), ADM and ViT blocks are recomputed in the backward from their inputs (``recompute``). The price is time:
the recomputed work runs twice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import checkpoint

from engine.errors import UsageError

MEMORY_MODES = ("plain", "lean")


def is_lean(memory: str, model: str) -> bool:
    """True for ``memory="lean"``; anything but the two modes is a one-line error naming the model's option."""
    if memory not in MEMORY_MODES:
        raise UsageError(f"{model}: memory={memory!r}; use one of {', '.join(MEMORY_MODES)}")
    return memory == "lean"


def recompute(block: Callable[..., torch.Tensor], *args: torch.Tensor | None) -> torch.Tensor:
    """block(*args), keeping only args for the backward, which reruns block first.

    Non-reentrant checkpointing: it restores the RNG state before the rerun, so dropout and stochastic depth
    draw what the forward drew, and parameters get their gradients as usual. Called through the
    ``torch.utils.checkpoint`` module (not a name bound at import) so that ``bench.saved_activations`` can
    count what a checkpoint keeps. Without autograd recording (eval, no_grad) the block just runs.
    """
    if not torch.is_grad_enabled():
        return block(*args)
    return checkpoint.checkpoint(block, *args, use_reentrant=False)
