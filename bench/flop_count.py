"""FLOPs of a training step with grouped and depthwise convolutions counted right.

torch's ``FlopCounterMode`` (torch/utils/flop_counter.py, ``conv_backward_flop``) counts the weight gradient
of a convolution as ``conv(x^T, grad_out^T)`` with ``x``'s full channel count as that conv's batch and
``grad_out``'s full channel count as its output channels, ignoring ``groups``: a grouped conv's weight
gradient reads ``groups`` times too many FLOPs, a depthwise conv's C times (ConvNeXt-T FiLM on a 32x64x64
latent: about 6.4 instead of about 2.2 GFLOP per training sample). Its forward formula and the input
gradient are right, since both take the per-group input channels from the weight's shape.

The fix is the counter's own extension point: ``custom_mapping`` replaces the formula for
``aten.convolution_backward``. (``register_flop_formula`` cannot: it refuses a second formula for an op
torch already registers, and would change every counter in the process.) Conventions stay torch's:
a multiply-add is 2 FLOPs, every kernel tap counts (padding included), bias adds, norms, elementwise work
and the optimizer count 0.

Each of the conv's gradients does exactly the multiply-adds of its forward (every forward product
``x[n, ci, p + k] * w[co, ci, k]`` appears once in ``grad_x`` and once in ``grad_w``), so the
backward is the forward count once per requested gradient, for plain, grouped, depthwise, strided,
dilated and transposed convolutions alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, shape_wrapper

aten = torch.ops.aten


def conv_flops(
    x_shape: Sequence[int], w_shape: Sequence[int], out_shape: Sequence[int], transposed: bool = False
) -> int:
    """Forward FLOPs of one convolution: 2 * N * positions * prod(w_shape).

    ``w_shape`` is the weight as torch stores it, (C_out, C_in / groups, *k), or (C_in, C_out / groups, *k)
    when transposed, so groups are already in it; positions are the output's (the input's when transposed).
    """
    positions = prod((x_shape if transposed else out_shape)[2:])
    return 2 * x_shape[0] * positions * prod(w_shape)


def conv_backward_flops(
    grad_out_shape: Sequence[int],
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed: bool,
    _output_padding,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape=None,
    **kwargs,
) -> int:
    """``aten.convolution_backward``: the forward's FLOPs for grad_input and again for grad_weight (those
    the mask asks for); grad_bias is a sum, 0 FLOPs. The forward's output shape is grad_out's."""
    forward = conv_flops(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


# What count_training_flops changes in torch's table; everything else (mm, addmm, bmm, baddbmm, the
# forward convolutions, attention) keeps torch's formula.
CORRECTED = {aten.convolution_backward: conv_backward_flops}


def flop_counter(**kwargs) -> FlopCounterMode:
    """A ``FlopCounterMode`` with the corrected convolution backward (display off unless asked)."""
    kwargs.setdefault("display", False)
    return FlopCounterMode(custom_mapping={**CORRECTED, **kwargs.pop("custom_mapping", {})}, **kwargs)


def count_training_flops(step_fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``step_fn()`` (forward, backward and optimizer step, as far as they are counted)."""
    with flop_counter() as counter:
        step_fn()
    return int(counter.get_total_flops())


def count_stock_flops(step_fn: Callable[[], object]) -> int:
    """The same with torch's table unchanged, for comparison (it overcounts grouped weight gradients)."""
    with FlopCounterMode(display=False) as counter:
        step_fn()
    return int(counter.get_total_flops())


_REGISTRY = {**flop_registry, **{k: shape_wrapper(v) for k, v in CORRECTED.items()}}


def op_flops(func, args: tuple, kwargs: dict, out) -> int:
    """FLOPs of one dispatched aten op (an OpOverload) by the corrected table; 0 for ops it has no formula
    for. For callers that see ops one at a time (a roofline), so they count exactly what the counter does."""
    formula = _REGISTRY.get(getattr(func, "_overloadpacket", func))
    return int(formula(*args, **(kwargs or {}), out_val=out)) if formula else 0


__all__ = [
    "CORRECTED",
    "conv_backward_flops",
    "conv_flops",
    "count_stock_flops",
    "count_training_flops",
    "flop_counter",
    "op_flops",
]
