"""A block's weights cast to the compute dtype in one pass, some with a per-row scale folded in first.

A lean block (``kernels.fused_mlp``, ``kernels.convnext_block``) casts its fp32 weights to the compute dtype each way
and folds the layer scale into fc2 (``gamma[:, None] * W2``, ``gamma * b2``, written in the compute dtype). In torch
ops that is one multi-tensor copy for the plain casts and one multiply per folded tensor: three kernels a ConvNeXt
block's forward and two its backward, most at the launch floor on the small weights. Here one program grid covers
all of them: the plain tensors land back to back in one buffer, the folded ones in another (each buffer is freed
with its last view, so the folded weights, which the backward drops first, do not keep the others alive or the
other way round).

The same arithmetic as the torch ops: a cast rounds once; a folded element is the fp32 product, rounded once (as
``torch.mul`` with a half ``out`` computes it). The CPU path is the torch ops (``cast_folded_reference``).
"""

from __future__ import annotations

from itertools import accumulate

import torch
import triton
import triton.language as tl

from kernels.common import cast_together, shaped_like, unread_pointer, use_triton

_BLOCK = 1024  # elements per program
MAX_PLAIN, MAX_FOLDED = 4, 2  # the kernel's segments; more take the torch ops


@triton.jit
def _cast_folded(
    p0_ptr,
    p1_ptr,
    p2_ptr,
    p3_ptr,
    f0_ptr,
    f1_ptr,
    scale_ptr,
    plain_ptr,
    folded_ptr,
    e0,
    e1,
    e2,
    e3,
    g0,
    g1,
    width0,
    width1,
    BLOCK: tl.constexpr,
):
    """Program p covers elements [p * BLOCK, (p + 1) * BLOCK) of the plain tensors back to back (ends e0..e3) and
    the same range of the folded ones (ends g0, g1; rows of width0, width1 elements each take scale[row])."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in0, in1, in2, in3 = o < e0, (o >= e0) & (o < e1), (o >= e1) & (o < e2), (o >= e2) & (o < e3)
    v = tl.load(p0_ptr + o, mask=in0, other=0.0)
    v = tl.where(in1, tl.load(p1_ptr + (o - e0), mask=in1, other=0.0), v)
    v = tl.where(in2, tl.load(p2_ptr + (o - e1), mask=in2, other=0.0), v)
    v = tl.where(in3, tl.load(p3_ptr + (o - e2), mask=in3, other=0.0), v)
    tl.store(plain_ptr + o, v.to(plain_ptr.dtype.element_ty), mask=o < e3)
    j0, j1 = o < g0, (o >= g0) & (o < g1)
    w = tl.load(f0_ptr + o, mask=j0, other=0.0) * tl.load(scale_ptr + o // width0, mask=j0, other=0.0)
    w1 = tl.load(f1_ptr + (o - g0), mask=j1, other=0.0) * tl.load(scale_ptr + (o - g0) // width1, mask=j1, other=0.0)
    w = tl.where(j1, w1, w)
    tl.store(folded_ptr + o, w.to(folded_ptr.dtype.element_ty), mask=o < g1)


def cast_folded_reference(
    plain: list[torch.Tensor], folded: list[torch.Tensor], scale: torch.Tensor, dtype: torch.dtype
) -> list[torch.Tensor]:
    """The torch ops: the plain tensors by one multi-tensor copy (``cast_together``), each folded one by one
    multiply written in dtype."""
    scaled = []
    for t in folded:
        factor = scale.view(-1, *(1,) * (t.dim() - 1))
        scaled.append(t * factor if t.dtype == dtype else torch.mul(t, factor, out=torch.empty_like(t, dtype=dtype)))
    return [*cast_together(plain, dtype), *scaled]


def _kernel_takes(plain: list[torch.Tensor], folded: list[torch.Tensor], scale: torch.Tensor) -> bool:
    tensors = [*plain, *folded, scale]
    return (
        0 < len(plain) <= MAX_PLAIN
        and 0 < len(folded) <= MAX_FOLDED
        and all(t.dtype == torch.float32 and t.is_contiguous() and t.numel() for t in tensors)
        and use_triton(scale)
    )


def cast_folded(
    plain: list[torch.Tensor], folded: list[torch.Tensor], scale: torch.Tensor, dtype: torch.dtype
) -> list[torch.Tensor]:
    """``[*(t.to(dtype) for t in plain), *((scale[:, None, ...] * t).to(dtype) for t in folded)]``: the plain
    tensors cast, the folded ones (each with scale's length as its first dim) scaled per row and cast. One Triton
    pass where ``use_triton`` says and it fits (1 to ``MAX_PLAIN`` plain and 1 to ``MAX_FOLDED`` folded fp32
    contiguous tensors), else the torch ops."""
    if any(t.shape[:1] != scale.shape for t in folded) or scale.dim() != 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in folded)
        raise ValueError(f"cast_folded: folded tensors {shapes} must each have scale's length {len(scale)} first")
    if not _kernel_takes(plain, folded, scale):
        return cast_folded_reference(plain, folded, scale, dtype)
    device = scale.device
    plain_out = torch.empty(sum(t.numel() for t in plain), dtype=dtype, device=device)
    folded_out = torch.empty(sum(t.numel() for t in folded), dtype=dtype, device=device)
    unused = unread_pointer(device)
    p = [*plain, *[unused] * (MAX_PLAIN - len(plain))]
    f = [*folded, *[unused] * (MAX_FOLDED - len(folded))]
    ends = list(accumulate([t.numel() for t in plain] + [0] * (MAX_PLAIN - len(plain))))
    folded_ends = list(accumulate([t.numel() for t in folded] + [0] * (MAX_FOLDED - len(folded))))
    widths = [t.numel() // len(scale) for t in folded] + [1] * (MAX_FOLDED - len(folded))
    grid = (triton.cdiv(max(ends[-1], folded_ends[-1]), _BLOCK),)
    _cast_folded[grid](*p, *f, scale, plain_out, folded_out, *ends, *folded_ends, *widths, BLOCK=_BLOCK)
    return [*shaped_like(plain_out, plain), *shaped_like(folded_out, folded)]
