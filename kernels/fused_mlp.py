"""A block's MLP (optional LayerNorm -> fc1 -> GELU -> fc2 -> layer scale) that keeps only its input for backward.

Eager PyTorch keeps, per position, the norm's input (in fp32 under autocast: layer_norm is an fp32 op), fc1's
input, GELU's input and output (4x wide each) and fc2's output for the layer scale: 26 bytes per element of a
ConvNeXt block's C x H x W under bf16 autocast, 24 of them here. This op saves its input in the compute dtype
(plus the weights, which exist anyway) and recomputes the norm, fc1 and GELU in the backward: one more fc1
matmul per step for a ~6x smaller saved set. The layer scale is folded into fc2 (``gamma * W2``,
``gamma * b2``), so no scaled copy of fc2's output is kept either.

Same mathematics as the plain modules: under autocast the matmuls run in the autocast dtype on casts of the
same fp32 weights, the norm in fp32 with its output rounded to the autocast dtype as fc1's autocast would; the
backward replays exactly the forward's recomputation (same ops, same dtypes). Only the fold reorders one
product (``(h @ W2.T + b2) * gamma`` becomes ``h @ (gamma * W2).T + gamma * b2``): equal up to rounding.
The matmuls are torch's; on CUDA the exact GELU and fc1's bias run as ``linear_gelu``'s Triton pass each way
(the matmul without its bias, the fp32 bias added in the pass, the bias gradient summed in the backward's pass),
as the plain ConvNeXt block runs them; elsewhere, and for the tanh GELU, torch's addmm and GELU ops. The weights
are cast to the compute dtype each way in one multi-tensor copy (``kernels.common.cast_together``), or with a layer
scale in one pass that also folds it into fc2 (``kernels.cast_folded``), and the folded fc2's gradients are unfolded
into fc2's and the layer scale's in one pass (``kernels.layer_scale_unfold``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.cast_folded import cast_folded
from kernels.common import FLOAT_DTYPES, cast_together, compute_dtype, use_triton
from kernels.layer_scale_unfold import unfold_layer_scale_
from kernels.linear_gelu import bias_gelu_backward, bias_gelu_forward

APPROXIMATIONS = ("none", "tanh")  # nn.GELU's: ConvNeXt uses the exact erf GELU, DiT-style ViTs tanh
# Device types whose matmul writes a float32 product of half inputs (``torch.mm``'s out_dtype; the CPU build has
# no such kernel). bench.simulated_step points it at the CPU stand-in for CUDA.
WIDE_MATMUL_DEVICES = ("cuda",)


def _norm_stats_dtype(x: torch.Tensor) -> torch.dtype:
    """LayerNorm runs in fp32 for half inputs (autocast's fp32 list), in x's own dtype otherwise."""
    return torch.promote_types(x.dtype, torch.float32)


def _fc1_input(x, norm, dtype):
    if norm is not None:
        weight, bias, eps = norm
        x = torch.native_layer_norm(x.to(_norm_stats_dtype(x)), (x.shape[-1],), weight, bias, eps)[0]
    return x.to(dtype)


def _gelu_in_kernel(t, approximate):
    """fc1's bias and exact GELU as ``linear_gelu``'s Triton pass (on CUDA, in a dtype it takes), as the plain
    ConvNeXt block runs them: the matmul without its bias, the fp32 bias added in the pass."""
    return approximate == "none" and t.dtype in FLOAT_DTYPES and use_triton(t)


def _cast(ahead, w1, b1, behind, folded, scale, dtype, approximate):
    """(*ahead, w1, b1, *behind, *folded) in dtype, the folded ones scaled per row by ``scale`` first: one multi-tensor
    copy (``cast_together``) without a scale, one pass with (``cast_folded``); b1 as it is where the GELU pass adds
    it."""
    in_kernel = _gelu_in_kernel(w1, approximate)
    plain = [*ahead, w1, *(() if in_kernel else (b1,)), *behind]
    cast = cast_together(plain, dtype) if scale is None else cast_folded(plain, list(folded), scale, dtype)
    at = len(ahead) + 1
    return [*cast[:at], b1, *cast[at:]] if in_kernel else cast


def forward_weights(w1, b1, w2, b2, scale, dtype, approximate, ahead=()):
    """(*ahead, fc1 weight and bias, fc2's with the layer scale folded in), as the forward multiplies by them: in
    dtype by one pass (ahead: weights of ops chained in front, cast in the same pass)."""
    if scale is None:
        return _cast(ahead, w1, b1, (w2, b2), (), None, dtype, approximate)
    return _cast(ahead, w1, b1, (), (w2, b2), scale, dtype, approximate)


def backward_weights(w1, b1, w2, scale, dtype, approximate, ahead=()):
    """``forward_weights`` without fc2's bias, which the backward does not read."""
    if scale is None:
        return _cast(ahead, w1, b1, (w2,), (), None, dtype, approximate)
    return _cast(ahead, w1, b1, (), (w2,), scale, dtype, approximate)


def _fc1_gelu(h, w1, b1, approximate, in_place=False):
    """(what GELU's backward reads, fc1 + GELU of h (..., C)): the pre-activation without the bias on the Triton
    pass, with it otherwise; in_place: GELU written over it (one 4x-wide tensor alive, then both are that one)."""
    if _gelu_in_kernel(h, approximate):
        a = F.linear(h, w1)
        rows = a.view(-1, a.shape[-1])
        return a, bias_gelu_forward(rows, b1, out=rows if in_place else None).view(a.shape)
    a = F.linear(h, w1, b1)
    if in_place:
        return a, torch.ops.aten.gelu.out(a, approximate=approximate, out=a)
    return a, F.gelu(a, approximate=approximate)


def _gelu_backward_(da, a, b1, approximate):
    """(GELU's backward of rows da at a, written over da; the bias gradient of these rows, >= fp32 on the pass)."""
    if _gelu_in_kernel(a, approximate):
        return bias_gelu_backward(da, a, b1, out=da)
    torch.ops.aten.gelu_backward.grad_input(da, a, approximate=approximate, grad_input=da)
    return da, da.sum(0)


# Bound on one 4x-wide tensor of the backward (fc1's output, GELU's and their gradients): the rows are taken in
# chunks of at most this many bytes of it, so a ConvNeXt-T stage-1 block at batch 256 (65,536 positions x 384,
# 48 MiB in bf16) keeps ~48 MiB of them alive instead of 96 (two chunks), and the later stages take one. Each
# chunk costs ~14 kernel launches, so smaller chunks trade launches for a peak the step does not reach here: at
# 8 MiB the lean ConvNeXt-T-FiLM step at batch 256 launched ~460 more kernels for the same peak (simulated; the
# step's peak is elsewhere; at 48 MiB, one chunk, it rises). Weight gradients are summed over chunks in at least
# float32: equal up to rounding to one matmul over all rows, and the same where one chunk holds them all.
CHUNK_BYTES = 32 * 2**20


def _weight_grad(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``, a weight's gradient (or a chunk's part of it), in float32 where the device writes half products so
    (``WIDE_MATMUL_DEVICES``): the matmul accumulates in float32 either way, and the half copy a cast would widen
    again is never written (one kernel fewer per weight, and no rounding to half before the sum over chunks)."""
    if a.dtype in (torch.float16, torch.bfloat16) and a.device.type in WIDE_MATMUL_DEVICES:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a @ b


def _sum_in(total: torch.Tensor | None, part: torch.Tensor) -> torch.Tensor:
    if total is None:
        return part.to(torch.promote_types(part.dtype, torch.float32))
    return total.add_(part)  # part widened inside the add: the same sum as of a widened copy, one kernel fewer


def mlp_output(x, norm, weights, approximate, dtype):
    """``_FusedMLP``'s function at x, in ``dtype``, given ``forward_weights``: its forward, which keeps no
    intermediate, so GELU overwrites its input (one 4x-wide tensor alive, not two)."""
    w1, b1, w2, b2 = weights
    _, g = _fc1_gelu(_fc1_input(x, norm, dtype), w1, b1, approximate, in_place=True)
    return F.linear(g, w2, b2)


class _FusedMLP(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, norm_weight, norm_bias, eps, w1, b1, w2, b2, scale, approximate):
        norm = (norm_weight, norm_bias, eps) if norm_weight is not None else None
        dtype = compute_dtype(x)
        kept = x if norm is not None else x.to(dtype)  # the norm's input as given, or fc1's in the compute dtype
        ctx.save_for_backward(kept, norm_weight, norm_bias, w1, b1, w2, b2, scale)
        ctx.eps, ctx.approximate, ctx.dtype, ctx.normed, ctx.x_dtype = (
            eps,
            approximate,
            dtype,
            norm is not None,
            x.dtype,
        )
        weights = forward_weights(w1, b1, w2, b2, scale, dtype, approximate)
        return mlp_output(kept, norm, weights, approximate, dtype)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        kept, norm_weight, norm_bias, w1, b1, w2, b2, scale = ctx.saved_tensors
        norm = (norm_weight, norm_bias, ctx.eps) if ctx.normed else None
        cast = backward_weights(w1, b1, w2, scale, ctx.dtype, ctx.approximate)
        dx, *grads = mlp_backward(
            dy, kept, norm, w1, b1, w2, b2, scale, cast, ctx.approximate, ctx.dtype, ctx.needs_input_grad[:3]
        )
        return (None if dx is None else dx.to(ctx.x_dtype), *grads[:2], None, *grads[2:], None)


def mlp_backward(dy, kept, norm, w1, b1, w2, b2, scale, cast, approximate, dtype, needs_norm_grads):
    """(d kept, d norm weight, d norm bias, d w1, d b1, d w2, d b2, d scale) of ``_FusedMLP``'s function at kept,
    rerunning its forward first; cast: ``backward_weights``; every gradient in its tensor's dtype but d kept, in
    the norm's (or the compute) dtype; needs_norm_grads: native_layer_norm_backward's mask (kept, weight, bias).
    Shared with ops that chain more in front of the MLP (``kernels.convnext_block``)."""
    h = _fc1_input(kept, norm, dtype)
    shape, h = h.shape, h.reshape(-1, h.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1]).to(dtype)
    w1c, b1c, w2s = cast
    dh = torch.empty_like(h)
    dw2s = dw1 = db1 = None
    rows = max(1, CHUNK_BYTES // (w1.shape[0] * h.element_size()))
    for chunk in (slice(start, start + rows) for start in range(0, h.shape[0], rows)):
        # fc1 and GELU rerun per chunk; each 4x-wide tensor is dropped once used (del) and GELU's gradient
        # overwrites the gradient it comes from: two chunk-sized ones alive at most, the backward's peak
        a, g = _fc1_gelu(h[chunk], w1c, b1c, approximate)
        dw2s = _sum_in(dw2s, _weight_grad(dy2[chunk].t(), g))  # gradient of the folded weight
        del g
        da, db1_rows = _gelu_backward_(dy2[chunk] @ w2s, a, b1c, approximate)
        del a
        dw1, db1 = _sum_in(dw1, _weight_grad(da.t(), h[chunk])), _sum_in(db1, db1_rows)
        torch.mm(da, w1c, out=dh[chunk])
        del da
    db2s = dy2.sum(0)  # of the folded bias
    dh = dh.view(shape)
    del h, dy2, w1c, w2s  # before the norm's backward, whose float32 copies are the next peak
    # (the weight gradients are cast one by one: each its own storage, which in-backward steps free bucket by bucket)

    if scale is not None:  # dw2s is this function's own float32 sum: unfolded in place
        dw2, db2, dscale = unfold_layer_scale_(dw2s, db2s, w2, b2, scale)
    else:
        dscale, dw2, db2 = None, dw2s, db2s

    dnorm_weight = dnorm_bias = None
    if norm is not None:
        norm_weight, norm_bias, eps = norm
        x = kept.to(_norm_stats_dtype(kept))
        mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps)[1:]
        dh = dh.to(x.dtype)
        dx, dnorm_weight, dnorm_bias = torch.ops.aten.native_layer_norm_backward(
            dh, x, (x.shape[-1],), mean, rstd, norm_weight, norm_bias, list(needs_norm_grads)
        )
    else:
        dx = dh
    return (
        dx,
        None if dnorm_weight is None else dnorm_weight.to(norm_weight.dtype),
        None if dnorm_bias is None else dnorm_bias.to(norm_bias.dtype),
        dw1.to(w1.dtype),
        db1.to(b1.dtype),
        dw2.to(w2.dtype),
        db2.to(b2.dtype),
        None if dscale is None else dscale.to(scale.dtype),
    )


def fused_mlp(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    layer_scale: torch.Tensor | None = None,
    approximate: str = "none",
    norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
) -> torch.Tensor:
    """``fc2(gelu(fc1(LayerNorm(x)))) * layer_scale`` over x's last dim, keeping only x for the backward.

    x: (..., C_in); fc1: (H, C_in), (H,); fc2: (C_out, H), (C_out,); layer_scale: (C_out,) or None;
    approximate: nn.GELU's; norm: (weight, bias, eps) of a LayerNorm over C_in applied first, or None.
    """
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"fused_mlp: approximate={approximate!r}; use one of {', '.join(APPROXIMATIONS)}")
    if x.shape[-1] != fc1_weight.shape[1] or fc2_weight.shape[1] != fc1_weight.shape[0]:
        raise ValueError(
            f"fused_mlp: x {tuple(x.shape)}, fc1 {tuple(fc1_weight.shape)} and fc2 {tuple(fc2_weight.shape)} "
            "do not chain; expected x (..., C_in), fc1 (H, C_in), fc2 (C_out, H)"
        )
    if layer_scale is not None and layer_scale.shape != (fc2_weight.shape[0],):
        raise ValueError(
            f"fused_mlp: layer_scale {tuple(layer_scale.shape)} must be (C_out,) = ({fc2_weight.shape[0]},)"
        )
    norm_weight, norm_bias, eps = norm if norm is not None else (None, None, 0.0)
    return _FusedMLP.apply(
        x, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias, layer_scale, approximate
    )


def fused_mlp_reference(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    layer_scale: torch.Tensor | None = None,
    approximate: str = "none",
    norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
) -> torch.Tensor:
    """The plain modules' composition (what the block computes without the fused op), for the tests."""
    if norm is not None:
        x = F.layer_norm(x, (x.shape[-1],), *norm)
    y = F.linear(F.gelu(F.linear(x, fc1_weight, fc1_bias), approximate=approximate), fc2_weight, fc2_bias)
    return y if layer_scale is None else y * layer_scale
