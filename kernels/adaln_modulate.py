"""adaLN modulation of DiT, fused: ``y = LN_C(x) * (1 + scale[b, c]) + shift[b, c]`` on token-major x.

x is (B, T, C) as a transformer block sees it; the LayerNorm over C has no affine of its own (DiT builds
``nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)`` and lets the per-sample adaLN projection supply
it), so scale and shift are (B, C), one row per sample broadcast over its tokens. Eager PyTorch runs the
norm and the modulation as separate passes over the activations; here x is read once forward, and
backward re-derives the normalised values from x and the fp32 (mean, rstd) per token instead of saving
them.

Not fused: DiT's gated residual ``x + gate[b] * sublayer(y)``. The gate multiplies the attention or MLP
output, not y, so it cannot enter this op; its natural fusion is with the next block's norm
(``h = x + gate * o; y = adaln_modulate(h, ...)``), a different op with two outputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.common import channel_tile, check_operands, check_x, reduction_split, sm_count, use_triton

_TILE = 4096  # elements per program tile (C is held whole; tokens fill the rest)
_MAX_BLOCK_C = 16384  # widest row held in registers; wider C runs the reference (no DiT comes near: XL is 1152)


@triton.jit
def _adaln_modulate_fwd(
    x_ptr,
    y_ptr,
    scale_ptr,
    shift_ptr,
    mean_ptr,
    rstd_ptr,
    T,
    C,
    sxb,
    sxt,
    syb,
    syt,
    eps,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Program (p, b): tokens [p * BLOCK_T, (p + 1) * BLOCK_T) of sample b, each a whole row of C (stride 1)."""
    b = tl.program_id(1).to(tl.int64)
    t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    tm, cm = t < T, c < C
    m = tm[:, None] & cm[None, :]
    x = tl.load(x_ptr + b * sxb + t[:, None] * sxt + c[None, :], mask=m, other=0.0).to(tl.float32)
    gain = 1.0 + tl.load(scale_ptr + b * C + c, mask=cm, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + b * C + c, mask=cm, other=0.0).to(tl.float32)

    mean = tl.sum(x, axis=1) / C  # two passes over the registers: no E[x^2] - E[x]^2 cancellation
    d = tl.where(m, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
    y = d * rstd[:, None] * gain[None, :] + shift[None, :]
    tl.store(y_ptr + b * syb + t[:, None] * syt + c[None, :], y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(mean_ptr + b * T + t, mean, mask=tm)
    tl.store(rstd_ptr + b * T + t, rstd, mask=tm)


@triton.jit
def _adaln_modulate_bwd(
    x_ptr,
    dy_ptr,
    dx_ptr,
    scale_ptr,
    mean_ptr,
    rstd_ptr,
    partial_ptr,
    T,
    C,
    n_split,
    sxb,
    sxt,
    sdyb,
    sdyt,
    sdxb,
    sdxt,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCKS_PER_PROGRAM: tl.constexpr,
):
    """Program (p, b) covers BLOCKS_PER_PROGRAM token blocks of sample b: dx per element, and fp32 partial
    sums over its tokens of dscale = sum dy * xhat and dshift = sum dy per channel, which the caller adds
    up in a fixed order (no atomics). The trip count is constexpr because Triton's interpreter cannot loop
    to a runtime bound under numpy >= 2.4."""
    p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    gain = 1.0 + tl.load(scale_ptr + b * C + c, mask=cm, other=0.0).to(tl.float32)
    dscale = tl.zeros([BLOCK_C], dtype=tl.float32)
    dshift = tl.zeros([BLOCK_C], dtype=tl.float32)
    for i in range(0, BLOCKS_PER_PROGRAM):
        t = ((p * BLOCKS_PER_PROGRAM + i) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        tm = t < T
        m = tm[:, None] & cm[None, :]
        x = tl.load(x_ptr + b * sxb + t[:, None] * sxt + c[None, :], mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + b * sdyb + t[:, None] * sdyt + c[None, :], mask=m, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + b * T + t, mask=tm, other=0.0)
        rstd = tl.load(rstd_ptr + b * T + t, mask=tm, other=0.0)

        xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * gain[None, :]
        mean_g = tl.sum(g, axis=1) / C
        mean_g_xhat = tl.sum(g * xhat, axis=1) / C
        dx = tl.where(m, (g - mean_g[:, None] - xhat * mean_g_xhat[:, None]) * rstd[:, None], 0.0)
        tl.store(dx_ptr + b * sdxb + t[:, None] * sdxt + c[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m)

        dscale += tl.sum(dy * xhat, axis=0)
        dshift += tl.sum(dy, axis=0)

    row = (b * n_split + p) * C + c
    plane = tl.num_programs(1) * n_split * C
    tl.store(partial_ptr + row, dscale, mask=cm)
    tl.store(partial_ptr + plane + row, dshift, mask=cm)


def _blocks(C: int, T: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_T, num_warps): C whole (padded to a power of two, masked), tokens up to _TILE elements."""
    return channel_tile(C, T, _TILE)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t itself when its channels are contiguous (any stride over samples and tokens), else a contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


class _AdalnModulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, shift, eps):
        x = _rows(x)
        B, T, C = x.shape
        block_c, block_t, warps = _blocks(C, T)
        scale, shift = scale.contiguous(), shift.contiguous()
        y = torch.empty(B, T, C, device=x.device, dtype=x.dtype)
        mean = torch.empty(B, T, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        _adaln_modulate_fwd[(triton.cdiv(T, block_t), B)](
            x,
            y,
            scale,
            shift,
            mean,
            rstd,
            T,
            C,
            x.stride(0),
            x.stride(1),
            y.stride(0),
            y.stride(1),
            eps,
            BLOCK_C=block_c,
            BLOCK_T=block_t,
            num_warps=warps,
        )
        ctx.save_for_backward(x, scale, mean, rstd)
        ctx.shift_dtype = shift.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, scale, mean, rstd = ctx.saved_tensors
        B, T, C = x.shape
        block_c, block_t, warps = _blocks(C, T)
        dy = _rows(dy)
        dx = torch.empty(B, T, C, device=x.device, dtype=x.dtype)
        n_blocks = triton.cdiv(T, block_t)
        per_program, n_split = reduction_split(n_blocks, B, sm_count(x.device))
        partial = torch.empty(2, B, n_split, C, device=x.device, dtype=torch.float32)
        _adaln_modulate_bwd[(n_split, B)](
            x,
            dy,
            dx,
            scale,
            mean,
            rstd,
            partial,
            T,
            C,
            n_split,
            x.stride(0),
            x.stride(1),
            dy.stride(0),
            dy.stride(1),
            dx.stride(0),
            dx.stride(1),
            BLOCK_C=block_c,
            BLOCK_T=block_t,
            BLOCKS_PER_PROGRAM=per_program,
            num_warps=warps,
        )
        dscale, dshift = partial.sum(2)  # over each sample's programs, in a fixed order
        return dx, dscale.to(scale.dtype), dshift.to(ctx.shift_dtype), None


def adaln_modulate_reference(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Plain torch, computed in at least fp32 (fp64 stays fp64, for gradcheck); returns x's dtype."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    y = torch.nn.functional.layer_norm(x.to(dtype), (x.shape[-1],), eps=eps)
    return (y * (1 + scale.to(dtype)[:, None]) + shift.to(dtype)[:, None]).to(x.dtype)


def _check(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    check_x("adaln_modulate", x, dims=(3,))
    B, _, C = x.shape
    check_operands("adaln_modulate", x, (("scale", scale, (B, C)), ("shift", shift, (B, C))))


def adaln_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over C of x without affine, then ``* (1 + scale[b, c]) + shift[b, c]`` (DiT's adaLN modulate).

    x: (B, T, C) in fp32/fp16/bf16 (output in x's dtype, statistics in fp32); scale, shift: (B, C) in any
    of those dtypes (their gradients come back in their own dtype, summed in fp32). x with contiguous
    channels is read in place whatever its sample and token strides; other layouts are copied first. The
    output is contiguous. C wider than the kernel's register row (16384) runs the reference.
    """
    _check(x, scale, shift)
    if x.numel() == 0 or triton.next_power_of_2(x.shape[-1]) > _MAX_BLOCK_C or not use_triton(x):
        return adaln_modulate_reference(x, scale, shift, eps)
    return _AdalnModulate.apply(x, scale, shift, eps)
