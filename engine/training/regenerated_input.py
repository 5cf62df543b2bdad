"""The lean step's network input, drawn in the network's first layer and regenerated in the backward.

The first layer of a latent network (ConvNeXt's stem conv, ADM's input conv, ViT's patch embedding) keeps its input
for its weight gradient: the standardised, masked and noised batch in the compute dtype, 2 bytes per element under
bf16 autocast (for the flux2 latent of a 512 px image, 0.26 MB a sample: the lean ConvNeXt-T's largest kept
tensor). Every value of it is a function of the stored batch, which stays on the device for the step anyway, and of
the step itself (its sigma levels and the Philox seed of its noise, from which ``kernels.add_noise`` draws the same
noise again). So the lean step keeps a recipe in its place and reruns that one element-wise pass when the backward
reaches the layer: the same values bit for bit, one pass over the batch more per step.

Handed to the network, the noised batch would still live through the whole forward (the caller's frame, the
module call's arguments and the network's own frame hold it) beside everything the forward keeps: at the paper's
scale that is the lean step's peak. So the network is handed the stored batch (alive anyway, of the same shape)
and the first layer draws the noised one on entry: it lives through that one call.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch


def draws_in_layer(memory: str, compiled: bool) -> bool:
    """Whether a step of ``memory`` mode draws its input in the network's first layer: lean and eager. Compiled,
    the network would trace the draw into its graph, whose step seed recompiles it every step; so a compiled lean
    network is handed the noised batch, as a plain one is."""
    return memory == "lean" and not compiled


@contextlib.contextmanager
def drawn_in_layer(layer: torch.nn.Module, draw: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Within the block, ``layer`` runs on ``draw()`` in place of the tensor it is handed, and an op saving that
    drawn tensor for its backward saves ``draw`` instead, which the backward calls for its values; every other
    saved tensor goes to the hooks already in place (a counter of saved bytes, say) or is kept as usual.

    ``draw`` must return the same values at every call (a deterministic function of tensors kept alive anyway)
    and must not hold its result. An op that saves a copy or a cast of the drawn tensor keeps that copy: only the
    tensor itself is replaced.
    """
    # only the innermost pair of saved-tensor hooks applies: chain to the pair this block would shadow
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
    # weakly: every tensor saved in the block keeps both hooks (and what they hold) until the backward frees it
    drawn: list[weakref.ref] = []

    def on_entry(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = draw()
        drawn.append(weakref.ref(x))
        return (x, *args[1:])

    def pack(t: torch.Tensor) -> Any:
        if any(t is ref() for ref in drawn):
            return draw  # what the backward finds where the drawn input would have been kept
        # detached: a kept output must not hold its own grad_fn (the reference cycle torch's docs warn of)
        return outer[0](t) if outer is not None else t.detach()

    def unpack(packed: Any) -> torch.Tensor:
        if packed is draw:
            return draw()
        return outer[1](packed) if outer is not None else packed

    handle = layer.register_forward_pre_hook(on_entry)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        handle.remove()
