"""The lean step's network input, regenerated in the backward instead of kept for it.

The first layer of a latent network (ConvNeXt's stem conv, ADM's input conv, ViT's patch embedding) keeps its input
for its weight gradient: the standardised, masked and noised batch in the compute dtype, 2 bytes per element under
bf16 autocast (for the flux2 latent of a 512 px image, 0.26 MB a sample: the lean ConvNeXt-T's largest kept
tensor). Every value of it is a function of the stored batch, which stays on the device for the step anyway, and of
the step itself (its sigma levels and the Philox seed of its noise, from which ``kernels.add_noise`` draws the same
noise again). So the lean step keeps a recipe in its place and reruns that one element-wise pass when the backward
reaches the layer: the same values bit for bit, one pass over the batch more per step.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch


@contextlib.contextmanager
def regenerated_in_backward(x: torch.Tensor, regenerate: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Within the block, an op saving ``x`` itself for its backward saves ``regenerate`` instead, which the
    backward calls for x's values; every other saved tensor goes to the hooks already in place (a counter of saved
    bytes, say) or is kept as usual.

    ``regenerate`` must return x's values exactly (a deterministic function of tensors kept alive anyway) and must
    not hold x. An op that saves a copy or a cast of x keeps that copy as before: only x itself is replaced.
    """
    # only the innermost pair of saved-tensor hooks applies: chain to the pair this block would shadow
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
    # weakly: every tensor saved in the block keeps both hooks (and what they hold) until the backward frees it
    input_ref = weakref.ref(x)

    def pack(t: torch.Tensor) -> Any:
        if t is input_ref():
            return regenerate  # what the backward finds where x would have been kept
        # detached: a kept output must not hold its own grad_fn (the reference cycle torch's docs warn of)
        return outer[0](t) if outer is not None else t.detach()

    def unpack(packed: Any) -> torch.Tensor:
        if packed is regenerate:
            return regenerate()
        return outer[1](packed) if outer is not None else packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
