"""A Linear followed by the exact (erf) GELU, ConvNeXt's fc1, with the bias and GELU fused in one pass each way.

``y = gelu(x @ W.T + b)``. Eager PyTorch runs fc1 as addmm (the bias in the matmul's epilogue) and GELU, and in
the backward as GELU's backward, the two matmuls and a separate sum over every row of the 4x-wide gradient for
the bias, plus, under bf16 autocast, a cast of the bias forward and of its gradient backward: kernels that move
nothing much each but cost a launch. Here the matmul runs without its bias (cuBLAS, through autograd as
before) and one Triton pass adds the fp32 bias and applies GELU; its backward recomputes the pre-activation,
writes its gradient and sums the bias gradient in the same pass (fp32 partial sums per program, added in a
fixed order). Saved: the matmul's output and the bias, the same bytes as eager's pre-activation.

Same mathematics up to rounding: the matmul's output is rounded to the compute dtype before the bias is added
(addmm adds it before rounding). The CPU path (the reference) is exactly ``F.gelu(F.linear(x, W, b))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.common import FLOAT_DTYPES, check_operands, reduction_split, sm_count, use_triton

_TILE = 4096  # elements per program tile
_BLOCK_N = 128  # columns per program
_SQRT1_2 = tl.constexpr(0.7071067811865476)  # globals a kernel reads must be constexpr
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _bias_gelu_fwd(h_ptr, b_ptr, y_ptr, R, N, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = (r < R)[:, None] & (n < N)[None, :]
    offs = r[:, None] * N + n[None, :]
    a = (
        tl.load(h_ptr + offs, mask=m, other=0.0).to(tl.float32)
        + tl.load(b_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
    )
    y = 0.5 * a * (1.0 + tl.math.erf(a * _SQRT1_2))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bias_gelu_bwd(
    h_ptr,
    b_ptr,
    dy_ptr,
    dh_ptr,
    partial_ptr,
    R,
    N,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCKS_PER_PROGRAM: tl.constexpr,
):
    """Program (p, j) covers BLOCKS_PER_PROGRAM row blocks of column block j: writes the pre-activation's gradient
    there and an fp32 partial sum of it per column (the bias gradient), which the caller sums in a fixed order.
    The trip count is constexpr because Triton's interpreter cannot loop to a runtime bound under numpy >= 2.4."""
    p = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    bias = tl.load(b_ptr + n, mask=nm, other=0.0).to(tl.float32)
    dbias = tl.zeros([BLOCK_N], dtype=tl.float32)
    for i in range(0, BLOCKS_PER_PROGRAM):
        r = (p * BLOCKS_PER_PROGRAM + i).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        m = (r < R)[:, None] & nm[None, :]
        offs = r[:, None] * N + n[None, :]
        a = tl.load(h_ptr + offs, mask=m, other=0.0).to(tl.float32) + bias[None, :]
        dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
        grad = 0.5 * (1.0 + tl.math.erf(a * _SQRT1_2)) + a * _INV_SQRT_2PI * tl.exp(-0.5 * a * a)
        da = tl.where(m, dy * grad, 0.0)
        tl.store(dh_ptr + offs, da.to(dh_ptr.dtype.element_ty), mask=m)
        dbias += tl.sum(da, axis=0)
    tl.store(partial_ptr + p * N + n, dbias, mask=nm)


def _blocks(N: int) -> tuple[int, int]:
    block_n = min(triton.next_power_of_2(N), _BLOCK_N)
    return max(1, _TILE // block_n), block_n


def bias_gelu_forward(h: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``gelu(h + bias)`` of contiguous rows h (R, N) in one Triton pass, into out (h itself may be it), outside
    autograd: the forward of ``linear_gelu``'s bias and GELU, for ops that rerun fc1 in their own backward
    (``kernels.fused_mlp``)."""
    R, N = h.shape
    block_r, block_n = _blocks(N)
    y = torch.empty_like(h) if out is None else out
    _bias_gelu_fwd[(triton.cdiv(R, block_r), triton.cdiv(N, block_n))](
        h, bias.contiguous(), y, R, N, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=4
    )
    return y


def bias_gelu_backward(
    dy: torch.Tensor, h: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient of h into out (dy itself may be it), fp32 gradient of the bias) of ``bias_gelu_forward`` at
    contiguous rows h (R, N), given dy's contiguous rows: one Triton pass and a sum of its per-program partials."""
    R, N = h.shape
    block_r, block_n = _blocks(N)
    dh = torch.empty_like(h) if out is None else out
    column_blocks = triton.cdiv(N, block_n)
    per_program, n_split = reduction_split(triton.cdiv(R, block_r), column_blocks, sm_count(h.device))
    partial = torch.empty(n_split, N, device=h.device, dtype=torch.float32)
    _bias_gelu_bwd[(n_split, column_blocks)](
        h,
        bias.contiguous(),
        dy,
        dh,
        partial,
        R,
        N,
        BLOCK_R=block_r,
        BLOCK_N=block_n,
        BLOCKS_PER_PROGRAM=per_program,
        num_warps=4,
    )
    return dh, partial.sum(0)


class _BiasGELU(torch.autograd.Function):
    """gelu(h + bias) over the rows of h (..., N), contiguous."""

    @staticmethod
    def forward(ctx, h, bias):
        h2, bias = h.reshape(-1, h.shape[-1]), bias.contiguous()  # the kernels index both as dense rows
        ctx.save_for_backward(h2, bias)
        ctx.shape = h.shape
        return bias_gelu_forward(h2, bias).view(h.shape)

    @staticmethod
    def backward(ctx, dy):
        h2, bias = ctx.saved_tensors
        dh, dbias = bias_gelu_backward(dy.reshape(h2.shape).contiguous(), h2, bias)
        return dh.view(ctx.shape), dbias.to(bias.dtype)


def linear_gelu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Plain torch, what ConvNeXt's fc1 and its GELU module compute."""
    return F.gelu(F.linear(x, weight, bias))


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)`` (exact GELU) of x (..., K), weight (N, K), bias (N,): the matmul in torch
    (autocast's dtype where autocast is on), the bias and GELU in one Triton pass; output in the matmul's dtype."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"linear_gelu: x must be a (..., K) tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"linear_gelu: x is {x.dtype}; use float32, float16 or bfloat16")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"linear_gelu: weight must be (N, {x.shape[-1]}) for x {tuple(x.shape)}, got {got}")
    check_operands("linear_gelu", x, (("weight", weight, tuple(weight.shape)), ("bias", bias, (weight.shape[0],))))
    if x.numel() == 0 or not use_triton(x):
        return linear_gelu_reference(x, weight, bias)
    return _BiasGELU.apply(F.linear(x, weight), bias)
