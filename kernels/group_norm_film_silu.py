"""GroupNorm, FiLM and SiLU fused: the block of ADM-style noise-aware ResNet classifiers.

``y = silu((GN(x) * weight[c] + bias[c]) * (1 + scale[b, c]) + shift[b, c])``. Eager PyTorch runs three
passes and saves two full-size intermediates for backward; here one program owns a whole (b, group),
so its statistics stay in registers and the per-channel affine, FiLM and SiLU fold into ``x * a + k``.
Backward saves only x and fp32 (mean, rstd) per group and re-derives the rest; dscale and dshift are
written per (b, c) directly, dweight and dbias as fp32 per-sample partials summed in a fixed order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.common import channel_tile, check_operands, check_x, spatial_flat, use_triton

_TILE = 4096  # elements per program tile (all channels of the group; positions fill the rest)


@triton.jit
def _film_affine(w_ptr, b_ptr, scale_ptr, shift_ptr, b, c, cm, C, mean, rstd):
    """Per-channel (a, k) with ``pre-SiLU = x * a + k``, and the pieces backward needs."""
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)
    gain = 1.0 + tl.load(scale_ptr + b * C + c, mask=cm, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + b * C + c, mask=cm, other=0.0).to(tl.float32)
    a = rstd * w * gain
    return a, bias * gain + shift - mean * a, w, bias, gain


@triton.jit
def _silu_grad(x, dy, m, a, k, mean, rstd):
    """Gradient at the SiLU input, and the normalised x (both zero outside the mask)."""
    u = x * a[:, None] + k[:, None]
    sig = tl.sigmoid(u)
    du = tl.where(m, dy * sig * (1.0 + u * (1.0 - sig)), 0.0)
    return du, tl.where(m, (x - mean) * rstd, 0.0)


@triton.jit
def _group_norm_film_silu_fwd(
    x_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    scale_ptr,
    shift_ptr,
    mean_ptr,
    rstd_ptr,
    C,
    S,
    G,
    CG,
    sxb,
    sxc,
    sxs,
    syb,
    syc,
    sys,
    eps,
    BLOCK_CG: tl.constexpr,
    BLOCK_S: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
):
    """One program per (b, g). A group that fits one tile is read once; a larger one is read twice
    (Chan's merge of per-chunk mean and M2, then the output pass). NUM_CHUNKS is constexpr because
    Triton's interpreter cannot loop to a runtime bound under numpy >= 2.4."""
    pid = tl.program_id(0)
    b = (pid // G).to(tl.int64)
    cc = tl.arange(0, BLOCK_CG)
    c = (pid % G) * CG + cc
    cm = cc < CG
    x_rows = x_ptr + b * sxb + c[:, None] * sxc
    y_rows = y_ptr + b * syb + c[:, None] * syc
    n = CG * S * 1.0
    if NUM_CHUNKS == 1:
        s = tl.arange(0, BLOCK_S)
        m = cm[:, None] & (s < S)[None, :]
        x = tl.load(x_rows + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
        mean = tl.sum(x) / n
        d = tl.where(m, x - mean, 0.0)
        var = tl.sum(d * d) / n
    else:
        mean = tl.zeros((), dtype=tl.float32)
        m2 = tl.zeros((), dtype=tl.float32)
        count = tl.zeros((), dtype=tl.float32)
        for i in range(0, NUM_CHUNKS):
            s = i * BLOCK_S + tl.arange(0, BLOCK_S)
            m = cm[:, None] & (s < S)[None, :]
            x = tl.load(x_rows + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
            n_k = CG * tl.minimum(S - i * BLOCK_S, BLOCK_S) * 1.0
            mean_k = tl.sum(x) / n_k
            d = tl.where(m, x - mean_k, 0.0)
            delta = mean_k - mean
            total = count + n_k
            mean += delta * (n_k / total)
            m2 += tl.sum(d * d) + delta * delta * (count * n_k / total)
            count = total
        var = m2 / n
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)

    a, k, _, _, _ = _film_affine(w_ptr, b_ptr, scale_ptr, shift_ptr, b, c, cm, C, mean, rstd)
    if NUM_CHUNKS == 1:
        u = x * a[:, None] + k[:, None]
        tl.store(y_rows + s[None, :] * sys, (u * tl.sigmoid(u)).to(y_ptr.dtype.element_ty), mask=m)
    else:
        for i in range(0, NUM_CHUNKS):
            s = i * BLOCK_S + tl.arange(0, BLOCK_S)
            m = cm[:, None] & (s < S)[None, :]
            x = tl.load(x_rows + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
            u = x * a[:, None] + k[:, None]
            tl.store(y_rows + s[None, :] * sys, (u * tl.sigmoid(u)).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _group_norm_film_silu_bwd(
    x_ptr,
    dy_ptr,
    dx_ptr,
    w_ptr,
    b_ptr,
    scale_ptr,
    shift_ptr,
    mean_ptr,
    rstd_ptr,
    dscale_ptr,
    dshift_ptr,
    partial_ptr,
    C,
    S,
    G,
    CG,
    sxb,
    sxc,
    sxs,
    sdyb,
    sdyc,
    sdys,
    sdxb,
    sdxc,
    sdxs,
    BLOCK_CG: tl.constexpr,
    BLOCK_S: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
):
    """One program per (b, g): per-channel sums of du and du * xhat give every parameter gradient
    and the two group means that dx needs; a group larger than one tile is read twice."""
    pid = tl.program_id(0)
    b = (pid // G).to(tl.int64)
    cc = tl.arange(0, BLOCK_CG)
    c = (pid % G) * CG + cc
    cm = cc < CG
    x_rows = x_ptr + b * sxb + c[:, None] * sxc
    dy_rows = dy_ptr + b * sdyb + c[:, None] * sdyc
    dx_rows = dx_ptr + b * sdxb + c[:, None] * sdxc
    n = CG * S * 1.0
    mean = tl.load(mean_ptr + pid)
    rstd = tl.load(rstd_ptr + pid)
    a, k, w, bias, gain = _film_affine(w_ptr, b_ptr, scale_ptr, shift_ptr, b, c, cm, C, mean, rstd)

    if NUM_CHUNKS == 1:
        s = tl.arange(0, BLOCK_S)
        m = cm[:, None] & (s < S)[None, :]
        x = tl.load(x_rows + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_rows + s[None, :] * sdys, mask=m, other=0.0).to(tl.float32)
        du, xhat = _silu_grad(x, dy, m, a, k, mean, rstd)
        sum_du = tl.sum(du, axis=1)
        sum_du_xhat = tl.sum(du * xhat, axis=1)
    else:
        sum_du = tl.zeros([BLOCK_CG], dtype=tl.float32)
        sum_du_xhat = tl.zeros([BLOCK_CG], dtype=tl.float32)
        for i in range(0, NUM_CHUNKS):
            s = i * BLOCK_S + tl.arange(0, BLOCK_S)
            m = cm[:, None] & (s < S)[None, :]
            x = tl.load(x_rows + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(dy_rows + s[None, :] * sdys, mask=m, other=0.0).to(tl.float32)
            du, xhat = _silu_grad(x, dy, m, a, k, mean, rstd)
            sum_du += tl.sum(du, axis=1)
            sum_du_xhat += tl.sum(du * xhat, axis=1)

    tl.store(dshift_ptr + b * C + c, sum_du.to(dshift_ptr.dtype.element_ty), mask=cm)
    tl.store(dscale_ptr + b * C + c, (w * sum_du_xhat + bias * sum_du).to(dscale_ptr.dtype.element_ty), mask=cm)
    plane = tl.num_programs(0) // G * C
    tl.store(partial_ptr + b * C + c, gain * sum_du_xhat, mask=cm)
    tl.store(partial_ptr + plane + b * C + c, gain * sum_du, mask=cm)

    w_gain = w * gain  # d(loss)/d(xhat) = du * w_gain
    mean_dxhat = tl.sum(w_gain * sum_du) / n
    mean_dxhat_xhat = tl.sum(w_gain * sum_du_xhat) / n
    if NUM_CHUNKS == 1:
        dx = (du * w_gain[:, None] - mean_dxhat - xhat * mean_dxhat_xhat) * rstd
        tl.store(dx_rows + s[None, :] * sdxs, dx.to(dx_ptr.dtype.element_ty), mask=m)
    else:
        for i in range(0, NUM_CHUNKS):
            s = i * BLOCK_S + tl.arange(0, BLOCK_S)
            m = cm[:, None] & (s < S)[None, :]
            x = tl.load(x_rows + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(dy_rows + s[None, :] * sdys, mask=m, other=0.0).to(tl.float32)
            du, xhat = _silu_grad(x, dy, m, a, k, mean, rstd)
            dx = (du * w_gain[:, None] - mean_dxhat - xhat * mean_dxhat_xhat) * rstd
            tl.store(dx_rows + s[None, :] * sdxs, dx.to(dx_ptr.dtype.element_ty), mask=m)


def _blocks(CG: int, S: int) -> tuple[int, int, int, int]:
    block_cg, block_s, warps = channel_tile(CG, S, _TILE)  # a group's channels whole
    return block_cg, block_s, triton.cdiv(S, block_s), warps


class _GroupNormFilmSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, scale, shift, eps):
        x3 = spatial_flat(x)
        B, C, S = x3.shape
        CG = C // num_groups
        block_cg, block_s, chunks, warps = _blocks(CG, S)
        weight, bias, scale, shift = (t.contiguous() for t in (weight, bias, scale, shift))
        y3 = torch.empty_like(x3)
        mean = torch.empty(B, num_groups, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        _group_norm_film_silu_fwd[(B * num_groups,)](
            x3,
            y3,
            weight,
            bias,
            scale,
            shift,
            mean,
            rstd,
            C,
            S,
            num_groups,
            CG,
            *x3.stride(),
            *y3.stride(),
            eps,
            BLOCK_CG=block_cg,
            BLOCK_S=block_s,
            NUM_CHUNKS=chunks,
            num_warps=warps,
        )
        ctx.save_for_backward(x3, weight, bias, scale, shift, mean, rstd)
        ctx.shape = x.shape
        return y3.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x3, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
        (B, C, S), num_groups = x3.shape, mean.shape[1]
        CG = C // num_groups
        block_cg, block_s, chunks, warps = _blocks(CG, S)
        dy3 = spatial_flat(dy)
        dx3 = torch.empty_like(x3)
        dscale, dshift = torch.empty_like(scale), torch.empty_like(shift)
        partial = torch.empty(2, B, C, device=x3.device, dtype=torch.float32)
        _group_norm_film_silu_bwd[(B * num_groups,)](
            x3,
            dy3,
            dx3,
            weight,
            bias,
            scale,
            shift,
            mean,
            rstd,
            dscale,
            dshift,
            partial,
            C,
            S,
            num_groups,
            CG,
            *x3.stride(),
            *dy3.stride(),
            *dx3.stride(),
            BLOCK_CG=block_cg,
            BLOCK_S=block_s,
            NUM_CHUNKS=chunks,
            num_warps=warps,
        )
        dweight, dbias = partial.sum(1)
        return dx3.view(ctx.shape), None, dweight.to(weight.dtype), dbias.to(bias.dtype), dscale, dshift, None


def group_norm_film_silu_reference(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Plain torch, computed in at least fp32 (fp64 stays fp64, for gradcheck); returns x's dtype."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    per_channel = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    h = torch.nn.functional.group_norm(x.to(dtype), num_groups, weight.to(dtype), bias.to(dtype), eps)
    u = h * (1 + scale.to(dtype).view(per_channel)) + shift.to(dtype).view(per_channel)
    return torch.nn.functional.silu(u).to(x.dtype)


def _check(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> None:
    B, C = check_x("group_norm_film_silu", x)
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm_film_silu: num_groups={num_groups!r} must be a positive int dividing C={C}")
    check_operands(
        "group_norm_film_silu",
        x,
        (("weight", weight, (C,)), ("bias", bias, (C,)), ("scale", scale, (B, C)), ("shift", shift, (B, C))),
    )


def group_norm_film_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``silu((group_norm(x) * weight[c] + bias[c]) * (1 + scale[b, c]) + shift[b, c])``.

    x: (B, C, *spatial) in fp32/fp16/bf16 (output in x's dtype, statistics in fp32); weight, bias: (C,);
    scale, shift: (B, C); C divisible by num_groups. Strides are handled in the kernel when the spatial
    dims merge into one strided axis (contiguous and channels-last do; channels-last output stays
    channels-last); other layouts are copied to contiguous first.
    """
    _check(x, num_groups, weight, bias, scale, shift)
    if x.numel() == 0 or not use_triton(x):
        return group_norm_film_silu_reference(x, num_groups, weight, bias, scale, shift, eps)
    return _GroupNormFilmSilu.apply(x, num_groups, weight, bias, scale, shift, eps)
