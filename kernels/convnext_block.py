"""A lean ConvNeXt block, ``x + keep[b] * branch(x)`` with branch = 7x7 depthwise conv, LayerNorm, fc1, GELU,
fc2, layer scale, that keeps only its input, in the compute dtype, for the backward.

``kernels.fused_mlp`` alone still leaves the conv in front of it to eager autograd: the conv keeps its input (under
autocast a bf16 copy of the fp32 residual stream) and the fused MLP keeps the conv's output, 4 bytes per element
of the block's C x H x W under bf16 autocast. Here the conv's input, cast once to the compute dtype (the cast
autocast makes for the conv anyway), is the one tensor kept; the backward reruns the depthwise conv (a cheap op:
49 multiply-adds per element) and then the fused MLP's backward, then the conv's: 2 bytes per element.

Same mathematics as the plain block, op for op: the conv in the compute dtype on casts of the same fp32 weights,
the block's norm as the plain block runs it (``kernels.channel_layer_norm``: one Triton pass each way on CUDA,
statistics in fp32, output in the conv's dtype; on the CPU the fp32 ``native_layer_norm`` of autocast), called
here outside autograd through its forward/backward pair, its output handed to the fused MLP
(``kernels.fused_mlp``, whose forward and backward this reuses), the gradient reaching the conv in the conv
output's dtype, as autograd would pass it. The weights are cast once each way, all four casts in one multi-tensor
copy (``kernels.common.cast_together``), the rerun conv and the conv's backward reading the same copy. The drop
and residual add are ``kernels.scaled_residual``'s pass without a layer scale (fc2 carries it), through its
forward/backward pair; the residual's gradient and the branch's are summed in one mixed-dtype add (the branch's
in the compute dtype, widened inside the add), where autograd would cast the branch's first and add after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.common import cast_together, compute_dtype
from kernels.film_layer_norm import channel_layer_norm_backward, channel_layer_norm_forward
from kernels.fused_mlp import backward_weights, forward_weights, mlp_backward, mlp_output
from kernels.scaled_residual import dropped_residual_backward, dropped_residual_forward, scaled_residual_reference


def _conv_and_norm(kept, conv_weight, conv_bias, norm):
    """The depthwise conv's output (B, C, H, W) and the block norm's (channels-last rows (B, H, W, C), as fc1 reads
    them), with the norm's statistics: what the forward computes and the backward reruns."""
    padding = conv_weight.shape[-1] // 2
    h = F.conv2d(kept, conv_weight, conv_bias, padding=padding, groups=kept.shape[1])
    normed, stats = channel_layer_norm_forward(h, norm[0], norm[1], norm[2], channels_last=True)
    return h, normed.permute(0, 2, 3, 1), stats


class _ConvNeXtBlock(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, conv_weight, conv_bias, norm_weight, norm_bias, eps, w1, b1, w2, b2, scale, keep, keep_scale):
        dtype = compute_dtype(x)
        kept = x.to(dtype)  # x itself where it already is in the compute dtype
        conv_w, conv_b, *weights = forward_weights(w1, b1, w2, b2, scale, dtype, "none", (conv_weight, conv_bias))
        _, normed, _ = _conv_and_norm(kept, conv_w, conv_b, (norm_weight, norm_bias, eps))
        branch = mlp_output(normed, None, weights, "none", dtype).permute(0, 3, 1, 2)
        out = dropped_residual_forward(x, branch, keep, keep_scale)
        ctx.save_for_backward(kept, conv_weight, conv_bias, norm_weight, norm_bias, w1, b1, w2, b2, scale, keep)
        ctx.eps, ctx.dtype, ctx.keep_scale = eps, dtype, keep_scale
        ctx.branch_like = (branch.shape, branch.stride(), branch.dtype)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dout):
        kept, conv_weight, conv_bias, norm_weight, norm_bias, w1, b1, w2, b2, scale, keep = ctx.saved_tensors
        dtype = ctx.dtype
        shape, stride, branch_dtype = ctx.branch_like
        dy = torch.empty_strided(shape, stride, dtype=branch_dtype, device=dout.device)
        dy = dropped_residual_backward(dout, keep, dy, ctx.keep_scale).permute(0, 2, 3, 1)  # fc2's rows, as output
        weight, bias, *cast = backward_weights(w1, b1, w2, scale, dtype, "none", (conv_weight, conv_bias))
        h, normed, stats = _conv_and_norm(kept, weight, bias, (norm_weight, norm_bias, ctx.eps))
        dnormed, *grads = mlp_backward(dy, normed, None, w1, b1, w2, b2, scale, cast, "none", dtype, ())
        del normed, dy
        dh, dnorm_weight, dnorm_bias = channel_layer_norm_backward(
            dnormed.permute(0, 3, 1, 2), h, norm_weight, norm_bias, stats
        )
        del h, dnormed  # the conv's backward reads its input, not its output
        channels, size = conv_weight.shape[0], conv_weight.shape[-1]
        dx, dconv_weight, dconv_bias = torch.ops.aten.convolution_backward(
            dh,
            kept,
            weight,
            [channels],
            [1, 1],
            [size // 2, size // 2],
            [1, 1],
            False,
            [0, 0],
            channels,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]],
        )
        if dconv_weight is not None and dconv_bias is not None:  # both, as in training: one multi-tensor copy
            dconv_weight, dconv_bias = cast_together([dconv_weight, dconv_bias], conv_weight.dtype)
        return (
            None if dx is None else torch.add(dout, dx),  # the residual's gradient and the branch's, in x's dtype
            None if dconv_weight is None else dconv_weight.to(conv_weight.dtype),
            None if dconv_bias is None else dconv_bias.to(conv_bias.dtype),
            dnorm_weight,
            dnorm_bias,
            None,
            *grads[2:],
            None,
            None,
        )


def convnext_block(
    x: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor,
    norm: tuple[torch.Tensor, torch.Tensor, float],
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    layer_scale: torch.Tensor,
    keep: torch.Tensor | None = None,
    keep_scale: float = 1.0,
) -> torch.Tensor:
    """``x + keep[b] * keep_scale * layer_scale * fc2(gelu(fc1(LayerNorm(dwconv(x)))))`` of (B, C, H, W) maps,
    keeping only x (in the compute dtype) for the backward.

    conv: (C, 1, k, k) depthwise, odd k, padding k // 2, and (C,); norm: (weight, bias, eps) over C; fc1: (H, C),
    (H,); fc2: (C, H), (C,); layer_scale: (C,); keep: (B,) stochastic-depth factor, or None for 1, times keep_scale
    (a 0/1 mask and 1 / keep probability, multiplied in the residual's pass); keep takes no gradient. Returns
    (B, C, H, W) in the dtype torch promotes x and the compute dtype to.
    """
    channels = x.shape[1] if x.dim() == 4 else None
    if channels is None or conv_weight.shape[:2] != (channels, 1) or conv_weight.shape[-1] % 2 == 0:
        raise ValueError(
            f"convnext_block: x {tuple(x.shape)} and conv {tuple(conv_weight.shape)}: expected x (B, C, H, W) and a "
            "depthwise conv (C, 1, k, k) with odd k"
        )
    if fc1_weight.shape[1] != channels or fc2_weight.shape != (channels, fc1_weight.shape[0]):
        raise ValueError(
            f"convnext_block: fc1 {tuple(fc1_weight.shape)} and fc2 {tuple(fc2_weight.shape)} do not chain with "
            f"{channels} channels; expected fc1 (H, {channels}), fc2 ({channels}, H)"
        )
    if layer_scale.shape != (channels,):
        raise ValueError(f"convnext_block: layer_scale {tuple(layer_scale.shape)} must be ({channels},)")
    if keep is not None and keep.shape != (x.shape[0],):
        raise ValueError(f"convnext_block: keep {tuple(keep.shape)} must be ({x.shape[0]},), one factor a sample")
    norm_weight, norm_bias, eps = norm
    return _ConvNeXtBlock.apply(
        x,
        conv_weight,
        conv_bias,
        norm_weight,
        norm_bias,
        eps,
        fc1_weight,
        fc1_bias,
        fc2_weight,
        fc2_bias,
        layer_scale,
        keep,
        keep_scale,
    )


def convnext_block_reference(
    x: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor,
    norm: tuple[torch.Tensor, torch.Tensor, float],
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    layer_scale: torch.Tensor,
    keep: torch.Tensor | None = None,
    keep_scale: float = 1.0,
) -> torch.Tensor:
    """The plain modules' composition (what the block computes without the fused op), for the tests."""
    h = F.conv2d(x, conv_weight, conv_bias, padding=conv_weight.shape[-1] // 2, groups=x.shape[1])
    h = F.layer_norm(h.permute(0, 2, 3, 1), (x.shape[1],), *norm)
    y = F.linear(F.gelu(F.linear(h, fc1_weight, fc1_bias)), fc2_weight, fc2_bias) * layer_scale
    return scaled_residual_reference(x, y.permute(0, 3, 1, 2), None, keep, keep_scale)
