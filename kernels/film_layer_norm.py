"""FiLM followed by the channel LayerNorm of ConvNeXt, fused: one pass forward, one backward.

``y = LN_C(x * (1 + scale[b, c]) + shift[b, c]) * weight[c] + bias[c]``, normalising over C at every
(b, position) of channels-first input, as ConvNeXt's ``LayerNorm2d`` does before a downsampling
layer or the head. Eager PyTorch needs a permute (a copy) around ``F.layer_norm`` plus the FiLM pass;
here x is read once forward, and backward re-derives the normalised values from x and the fp32
(mean, rstd) per position instead of saving them.

Without FiLM (``channel_layer_norm``) the same kernels are the LayerNorm inside every ConvNeXt block, between
the depthwise conv and fc1. Under bf16 autocast eager PyTorch runs that norm as four passes, each a kernel:
the conv's bf16 output cast to fp32, the fp32 norm, its fp32 output cast back to bf16 for fc1, and in the
backward the same casts around the norm's backward; autograd keeps the fp32 copy (4 bytes per element). Here
it is one pass each way in the conv's dtype (statistics in fp32, as autocast's norm), keeping the conv's
output itself (2 bytes), and the output is written channels-last, the rows fc1 multiplies.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.common import (
    FLOAT_DTYPES,
    channel_tile,
    check_operands,
    check_x,
    reduction_split,
    sm_count,
    spatial_flat,
    use_triton,
)

_TILE = 4096  # elements per program tile (C is held whole; positions fill the rest)


@triton.jit
def _film_layer_norm_fwd(
    x_ptr,
    y_ptr,
    scale_ptr,
    shift_ptr,
    w_ptr,
    b_ptr,
    mean_ptr,
    rstd_ptr,
    C,
    S,
    sxb,
    sxc,
    sxs,
    syb,
    syc,
    sys,
    eps,
    HAS_FILM: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    cm, sm = c < C, s < S
    m = cm[:, None] & sm[None, :]
    x = tl.load(x_ptr + b * sxb + c[:, None] * sxc + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)

    if HAS_FILM:
        gain = 1.0 + tl.load(scale_ptr + b * C + c, mask=cm, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + b * C + c, mask=cm, other=0.0).to(tl.float32)
        f = tl.where(m, x * gain[:, None] + shift[:, None], 0.0)
    else:
        f = x
    mean = tl.sum(f, axis=0) / C
    d = tl.where(m, f - mean[None, :], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)
    y = d * rstd[None, :] * w[:, None] + bias[:, None]
    tl.store(y_ptr + b * syb + c[:, None] * syc + s[None, :] * sys, y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(mean_ptr + b * S + s, mean, mask=sm)
    tl.store(rstd_ptr + b * S + s, rstd, mask=sm)


@triton.jit
def _film_layer_norm_bwd(
    x_ptr,
    dy_ptr,
    dx_ptr,
    scale_ptr,
    shift_ptr,
    w_ptr,
    mean_ptr,
    rstd_ptr,
    partial_ptr,
    C,
    S,
    n_split,
    sxb,
    sxc,
    sxs,
    sdyb,
    sdyc,
    sdys,
    sdxb,
    sdxc,
    sdxs,
    HAS_FILM: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCKS_PER_PROGRAM: tl.constexpr,
):
    """Program (p, b) covers BLOCKS_PER_PROGRAM position blocks of sample b and writes fp32 partial sums
    over them of (dweight, dbias, dscale, dshift) per channel (the last two with FiLM only); the caller sums
    those in a fixed order. The trip count is constexpr because Triton's interpreter cannot loop to a runtime
    bound under numpy >= 2.4."""
    p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    if HAS_FILM:
        gain = 1.0 + tl.load(scale_ptr + b * C + c, mask=cm, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + b * C + c, mask=cm, other=0.0).to(tl.float32)
    else:
        gain = tl.full([BLOCK_C], 1.0, dtype=tl.float32)
        shift = tl.zeros([BLOCK_C], dtype=tl.float32)
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    dweight = tl.zeros([BLOCK_C], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_C], dtype=tl.float32)
    dscale = tl.zeros([BLOCK_C], dtype=tl.float32)
    dshift = tl.zeros([BLOCK_C], dtype=tl.float32)
    for i in range(0, BLOCKS_PER_PROGRAM):
        s = (p * BLOCKS_PER_PROGRAM + i) * BLOCK_S + tl.arange(0, BLOCK_S)
        sm = s < S
        m = cm[:, None] & sm[None, :]
        x = tl.load(x_ptr + b * sxb + c[:, None] * sxc + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + b * sdyb + c[:, None] * sdyc + s[None, :] * sdys, mask=m, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + b * S + s, mask=sm, other=0.0)
        rstd = tl.load(rstd_ptr + b * S + s, mask=sm, other=0.0)

        fhat = tl.where(m, (x * gain[:, None] + shift[:, None] - mean[None, :]) * rstd[None, :], 0.0)
        g = dy * w[:, None]
        mean_g = tl.sum(g, axis=0) / C
        mean_g_fhat = tl.sum(g * fhat, axis=0) / C
        df = tl.where(m, (g - mean_g[None, :] - fhat * mean_g_fhat[None, :]) * rstd[None, :], 0.0)
        dx = df * gain[:, None]
        tl.store(dx_ptr + b * sdxb + c[:, None] * sdxc + s[None, :] * sdxs, dx.to(dx_ptr.dtype.element_ty), mask=m)

        dweight += tl.sum(dy * fhat, axis=1)
        dbias += tl.sum(dy, axis=1)
        if HAS_FILM:
            dscale += tl.sum(df * x, axis=1)
            dshift += tl.sum(df, axis=1)

    row = (b * n_split + p) * C + c
    plane = tl.num_programs(1) * n_split * C
    tl.store(partial_ptr + row, dweight, mask=cm)
    tl.store(partial_ptr + plane + row, dbias, mask=cm)
    if HAS_FILM:
        tl.store(partial_ptr + 2 * plane + row, dscale, mask=cm)
        tl.store(partial_ptr + 3 * plane + row, dshift, mask=cm)


def _blocks(C: int, S: int) -> tuple[int, int, int]:
    return channel_tile(C, S, _TILE)  # _TILE read at the call: the tests shrink it


def _launch_forward(x, scale, shift, weight, bias, eps, channels_last):
    """(y, mean, rstd) of the Triton forward; scale and shift None: no FiLM (HAS_FILM off, the weight stands in for
    their pointers, never read)."""
    x3 = spatial_flat(x)
    B, C, S = x3.shape
    block_c, block_s, warps = _blocks(C, S)
    film = scale is not None
    scale, shift = (scale.contiguous(), shift.contiguous()) if film else (weight, weight)
    y = torch.empty_like(x, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    y3 = spatial_flat(y)
    mean = torch.empty(B, S, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _film_layer_norm_fwd[(triton.cdiv(S, block_s), B)](
        x3,
        y3,
        scale,
        shift,
        weight.contiguous(),
        bias.contiguous(),
        mean,
        rstd,
        C,
        S,
        *x3.stride(),
        *y3.stride(),
        eps,
        HAS_FILM=film,
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        num_warps=warps,
    )
    return y, mean, rstd


def _launch_backward(x, dy, scale, shift, weight, mean, rstd):
    """(dx in x's dtype, partial) of the Triton backward: partial (2 or with FiLM 4, B, splits, C) holds fp32 sums of
    dweight, dbias (, dscale, dshift) over each program's positions, for the caller to reduce."""
    x3 = spatial_flat(x)
    B, C, S = x3.shape
    block_c, block_s, warps = _blocks(C, S)
    film = scale is not None
    scale, shift = (scale.contiguous(), shift.contiguous()) if film else (weight, weight)
    dy3 = spatial_flat(dy)
    dx3 = torch.empty_like(x3)
    n_blocks = triton.cdiv(S, block_s)
    per_program, n_split = reduction_split(n_blocks, B, sm_count(x3.device))
    partial = torch.empty(4 if film else 2, B, n_split, C, device=x3.device, dtype=torch.float32)
    _film_layer_norm_bwd[(n_split, B)](
        x3,
        dy3,
        dx3,
        scale,
        shift,
        weight.contiguous(),
        mean,
        rstd,
        partial,
        C,
        S,
        n_split,
        *x3.stride(),
        *dy3.stride(),
        *dx3.stride(),
        HAS_FILM=film,
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        BLOCKS_PER_PROGRAM=per_program,
        num_warps=warps,
    )
    return dx3.view(x.shape), partial


class _FilmLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, shift, weight, bias, eps, channels_last):
        if scale is not None:  # FiLM's (gamma, beta) arrive as chunks of one projection: kept contiguous
            scale, shift = scale.contiguous(), shift.contiguous()
        y, mean, rstd = _launch_forward(x, scale, shift, weight, bias, eps, channels_last)
        ctx.save_for_backward(x, scale, shift, weight, mean, rstd)
        ctx.bias_dtype = bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, scale, shift, weight, mean, rstd = ctx.saved_tensors
        dx, partial = _launch_backward(x, dy, scale, shift, weight, mean, rstd)
        dweight, dbias = partial[:2].sum((1, 2))  # one reduction each for the parameters and the FiLM pair
        dscale = dshift = None
        if scale is not None:
            dscale, dshift = (d.to(t.dtype) for d, t in zip(partial[2:].sum(2), (scale, shift)))
        return dx, dscale, dshift, dweight.to(weight.dtype), dbias.to(ctx.bias_dtype), None, None


def film_layer_norm_reference(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Plain torch, computed in at least fp32 (fp64 stays fp64, for gradcheck); returns x's dtype."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    per_channel = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    f = x.to(dtype) * (1 + scale.to(dtype).view(per_channel)) + shift.to(dtype).view(per_channel)
    y = torch.nn.functional.layer_norm(f.movedim(1, -1), (x.shape[1],), weight.to(dtype), bias.to(dtype), eps)
    return y.movedim(-1, 1).to(x.dtype)


def channel_layer_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6, channels_last: bool = False
) -> torch.Tensor:
    """Plain torch: ``F.layer_norm`` over C of x's channels-last view, as ConvNeXt's block writes it (on an fp32
    x exactly that op, as before the kernel existed), in at least fp32; returns x's dtype. channels_last is the
    kernel's output layout and changes no value here."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    y = torch.nn.functional.layer_norm(x.movedim(1, -1).to(dtype), (x.shape[1],), weight.to(dtype), bias.to(dtype), eps)
    return y.movedim(-1, 1).to(x.dtype)


def film_layer_norm(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """LayerNorm over C of ``x * (1 + scale[b, c]) + shift[b, c]``, then ``* weight[c] + bias[c]``.

    x: (B, C, *spatial) in fp32/fp16/bf16 (output in x's dtype, statistics in fp32); scale, shift: (B, C);
    weight, bias: (C,). Strides are handled in the kernel when the spatial dims merge into one strided
    axis (contiguous and channels-last do; channels-last output stays channels-last); other layouts are
    copied to contiguous first.
    """
    B, C = check_x("film_layer_norm", x)
    check_operands(
        "film_layer_norm",
        x,
        (("scale", scale, (B, C)), ("shift", shift, (B, C)), ("weight", weight, (C,)), ("bias", bias, (C,))),
    )
    if x.numel() == 0 or not use_triton(x):
        return film_layer_norm_reference(x, scale, shift, weight, bias, eps)
    return _FilmLayerNorm.apply(x, scale, shift, weight, bias, eps, False)


def channel_layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6, channels_last: bool = False
) -> torch.Tensor:
    """LayerNorm over C of x (B, C, *spatial), ``* weight[c] + bias[c]``: ``film_layer_norm`` without FiLM.

    x in fp32/fp16/bf16, output in x's dtype (statistics in fp32): under bf16 autocast the bf16 a following
    Linear would cast autocast's fp32 norm to anyway. channels_last (4-d x): the output is written channels-last,
    so its (B, H, W, C) permute is contiguous rows; otherwise it keeps x's layout as ``film_layer_norm`` does.
    """
    B, C = check_x("channel_layer_norm", x, (4,) if channels_last else None)
    check_operands("channel_layer_norm", x, (("weight", weight, (C,)), ("bias", bias, (C,))))
    if x.numel() == 0 or not use_triton(x):
        return channel_layer_norm_reference(x, weight, bias, eps, channels_last)
    return _FilmLayerNorm.apply(x, None, None, weight, bias, eps, channels_last)


def channel_layer_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6, channels_last: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``channel_layer_norm``'s output and the statistics its backward reads, outside autograd: for ops that rerun
    the norm inside their own backward (``kernels.convnext_block``) and hand both to
    ``channel_layer_norm_backward``. The statistics' layout is the path's own (Triton's or the reference's, which
    also takes what the kernel does not: fp64)."""
    if x.numel() and x.dtype in FLOAT_DTYPES and use_triton(x):
        y, mean, rstd = _launch_forward(x, None, None, weight, bias, eps, channels_last)
        return y, (mean, rstd)
    dtype = torch.promote_types(x.dtype, torch.float32)  # autocast's fp32 norm of a half x
    y, mean, rstd = torch.native_layer_norm(x.movedim(1, -1).to(dtype), (x.shape[1],), weight, bias, eps)
    return y.movedim(-1, 1).to(x.dtype), (mean, rstd)


def channel_layer_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stats: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx in x's dtype, dweight, dbias in theirs) of ``channel_layer_norm`` at x, given the statistics
    ``channel_layer_norm_forward`` returned for the same x on the same path."""
    mean, rstd = stats
    if x.numel() and x.dtype in FLOAT_DTYPES and use_triton(x):
        dx, partial = _launch_backward(x, dy, None, None, weight, mean, rstd)
        dweight, dbias = partial.sum((1, 2))
        return dx, dweight.to(weight.dtype), dbias.to(bias.dtype)
    dtype = mean.dtype
    rows = x.movedim(1, -1).to(dtype)
    dx, dweight, dbias = torch.ops.aten.native_layer_norm_backward(
        dy.movedim(1, -1).to(dtype), rows, (x.shape[1],), mean, rstd, weight, bias, [True, True, True]
    )
    return dx.movedim(-1, 1).to(x.dtype), dweight.to(weight.dtype), dbias.to(bias.dtype)
