"""The image baseline with the latent side's memory lever: every residual block of a ResNet recomputed in the
backward from its input (``engine.models.memory.recompute``, non-reentrant ``torch.utils.checkpoint``).

What ``memory="lean"`` means for bench's image models, so a pairing can set the lean latent step against an
image step that pays the same price (one more forward of each block) for less memory, not only against the
stock one. Same parameters and same function; BatchNorm's running statistics are updated twice per step (the
rerun is a train-mode forward), which changes no gradient of the step and does not matter to a benchmark.
"""

from __future__ import annotations

from torch import nn

from engine.models.memory import recompute
from engine.models.resnet import BasicBlock, Bottleneck


def recompute_residual_blocks(net: nn.Module) -> nn.Module:
    """net with each residual block's forward run through ``recompute``; the number of blocks wrapped must be
    more than zero (a model without residual blocks has no such lever)."""
    blocks = [m for m in net.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    if not blocks:
        raise ValueError(f"{type(net).__name__}: no residual blocks to recompute")
    for block in blocks:
        block.forward = lambda x, forward=block.forward: recompute(forward, x)
    return net
