"""FiLM modulation ``y = x * (1 + scale[b, c]) + shift[b, c]`` with a one-pass backward.

No model calls it: the models apply FiLM fused with the norm that follows it (``film_layer_norm``,
``group_norm_film_silu``). It is kept as the unfused op `bench kernels` measures beside them, which shows
what the fusion saves. It is therefore not exported from ``kernels``: import it as ``kernels.film``.

The backward reads dy and x once and writes dx together with dscale = sum over positions of dy * x
and dshift = sum over positions of dy. Each program owns whole (b, c) planes, so scale and shift are
scalars per row and the position sums finish inside one program in a fixed order: fp32 and
deterministic, no atomics and no second reduction pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.common import check_operands, check_x, plane_tile, spatial_flat, use_triton

_TILE = 2048  # elements per program tile: 8 per thread at 8 warps


@triton.jit
def _film_fwd(
    x_ptr,
    y_ptr,
    scale_ptr,
    shift_ptr,
    S,
    n_rows,
    sxb,
    sxc,
    sxs,
    syb,
    syc,
    sys,
    C,
    ROWS: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    s = (tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    rm = rows < n_rows
    m = rm[:, None] & (s < S)[None, :]
    b, c = (rows // C).to(tl.int64), (rows % C).to(tl.int64)
    gain = 1.0 + tl.load(scale_ptr + rows, mask=rm, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + rows, mask=rm, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + (b * sxb + c * sxc)[:, None] + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
    y = x * gain[:, None] + shift[:, None]
    tl.store(y_ptr + (b * syb + c * syc)[:, None] + s[None, :] * sys, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _film_bwd(
    x_ptr,
    dy_ptr,
    dx_ptr,
    scale_ptr,
    dscale_ptr,
    dshift_ptr,
    S,
    n_rows,
    sxb,
    sxc,
    sxs,
    sdb,
    sdc,
    sds,
    sgb,
    sgc,
    sgs,
    C,
    ROWS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    N_BLOCKS: tl.constexpr,
):
    """ROWS whole planes per program: dx per element, (dscale, dshift) per plane in fp32.

    N_BLOCKS = cdiv(S, BLOCK_S) is a constexpr because Triton 3.6's interpreter cannot loop to a
    runtime bound with numpy 2.4 (one compile per spatial size on the GPU: a handful per model)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rm = rows < n_rows
    b, c = (rows // C).to(tl.int64), (rows % C).to(tl.int64)
    gain = 1.0 + tl.load(scale_ptr + rows, mask=rm, other=0.0).to(tl.float32)
    dscale = tl.zeros([ROWS, BLOCK_S], dtype=tl.float32)
    dshift = tl.zeros([ROWS, BLOCK_S], dtype=tl.float32)
    for i in range(N_BLOCKS):
        s = (i * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
        m = rm[:, None] & (s < S)[None, :]
        x = tl.load(x_ptr + (b * sxb + c * sxc)[:, None] + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + (b * sdb + c * sdc)[:, None] + s[None, :] * sds, mask=m, other=0.0).to(tl.float32)
        tl.store(
            dx_ptr + (b * sgb + c * sgc)[:, None] + s[None, :] * sgs,
            (dy * gain[:, None]).to(dx_ptr.dtype.element_ty),
            mask=m,
        )
        dscale += dy * x
        dshift += dy
    tl.store(dscale_ptr + rows, tl.sum(dscale, axis=1), mask=rm)
    tl.store(dshift_ptr + rows, tl.sum(dshift, axis=1), mask=rm)


def _launch(n_rows: int, S: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK_S, num_warps) of the film kernels."""
    rows, block_s = plane_tile(n_rows, S, _TILE)
    return rows, block_s, 8 if rows * block_s >= 2048 else 4


class _Film(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, shift):
        x3 = spatial_flat(x)
        B, C, S = x3.shape
        rows, block_s, warps = _launch(B * C, S)
        y3 = torch.empty_like(x3)
        _film_fwd[(triton.cdiv(B * C, rows), triton.cdiv(S, block_s))](
            x3, y3, scale, shift, S, B * C, *x3.stride(), *y3.stride(), C, ROWS=rows, BLOCK_S=block_s, num_warps=warps
        )
        ctx.save_for_backward(x3, scale)
        ctx.x_shape, ctx.shift_dtype = x.shape, shift.dtype
        return y3.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x3, scale = ctx.saved_tensors
        B, C, S = x3.shape
        rows, block_s, warps = _launch(B * C, S)
        dy3 = spatial_flat(dy)
        dx3 = torch.empty_like(x3)
        dscale = torch.empty(B, C, dtype=torch.float32, device=x3.device)
        dshift = torch.empty_like(dscale)
        _film_bwd[(triton.cdiv(B * C, rows),)](
            x3,
            dy3,
            dx3,
            scale,
            dscale,
            dshift,
            S,
            B * C,
            *x3.stride(),
            *dy3.stride(),
            *dx3.stride(),
            C,
            ROWS=rows,
            BLOCK_S=block_s,
            N_BLOCKS=triton.cdiv(S, block_s),
            num_warps=warps,
        )
        return dx3.view(ctx.x_shape), dscale.to(scale.dtype), dshift.to(ctx.shift_dtype)


def film_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Plain torch in at least fp32 (fp64 stays fp64, for gradcheck); returns x's dtype."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    per_plane = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    y = x.to(dtype) * (1 + scale.to(dtype).view(per_plane)) + shift.to(dtype).view(per_plane)
    return y.to(x.dtype)


def _check(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    B, C = check_x("film", x)
    check_operands(
        "film",
        x,
        (("scale", scale, (B, C)), ("shift", shift, (B, C))),
        dtypes=tuple(dict.fromkeys((torch.float32, x.dtype))),
    )


def film(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale[b, c]) + shift[b, c]`` for x (B, C, *spatial) in fp32/fp16/bf16, output in x's dtype.

    scale, shift: (B, C), fp32 or x's dtype (their gradients come back in their own dtype; sums in fp32).
    Strides of x are handled in the kernel when the spatial dims merge into one strided axis
    (contiguous and channels-last do; the output keeps that layout); other layouts are copied first.
    scale and shift are made contiguous (a no-op for the usual (B, C) projection output).
    """
    _check(x, scale, shift)
    if not use_triton(x):
        return film_reference(x, scale, shift)
    return _Film.apply(x, scale.contiguous(), shift.contiguous())
