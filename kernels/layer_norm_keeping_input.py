"""LayerNorm over the last dim that keeps its input as given for the backward, not the float32 copy autocast makes.

Under autocast ``layer_norm`` is a float32 op: a bf16 input is cast to float32 first and eager autograd saves that
copy, 4 bytes per element for what a 2-byte tensor holds exactly. This op runs the same float32 norm on the same
cast, saves the input itself (and the per-row mean and rstd, which are small) and casts again in the backward:
the same values forward and backward, half the bytes kept. Plain torch ops; there is no Triton path.
"""

from __future__ import annotations

import torch


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # float32 for half inputs, as autocast; x's own otherwise


class _LayerNormKeepingInput(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = torch.native_layer_norm(x.to(_stats_dtype(x)), (x.shape[-1],), weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        stats = x.to(_stats_dtype(x))
        dx, dweight, dbias = torch.ops.aten.native_layer_norm_backward(
            dy.to(stats.dtype), stats, (x.shape[-1],), mean, rstd, weight, bias, list(ctx.needs_input_grad[:3])
        )
        return None if dx is None else dx.to(x.dtype), dweight, dbias, None


def layer_norm_keeping_input(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.layer_norm(x, (C,), weight, bias, eps)`` of x (..., C) with autocast's dtypes (float32 out for a half
    input), keeping x itself for the backward."""
    if weight.shape != (x.shape[-1],) or bias.shape != weight.shape:
        raise ValueError(
            f"layer_norm_keeping_input: x {tuple(x.shape)}, weight {tuple(weight.shape)} and bias "
            f"{tuple(bias.shape)}: expected weight and bias ({x.shape[-1]},)"
        )
    return _LayerNormKeepingInput.apply(x, weight, bias, eps)
