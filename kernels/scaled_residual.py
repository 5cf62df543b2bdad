"""A ConvNeXt block's residual add with its layer scale and stochastic depth, fused: one pass forward, one backward.

``out = x + branch * gamma[c] * keep[b]``: x the fp32 residual stream, branch the block's output (bf16 under
autocast, a channels-last view), gamma the layer scale (None where the branch applied it already, as a lean
block folds it into fc2), keep the per-sample stochastic-depth factor (0 or 1 / keep probability; None outside
training). Eager PyTorch runs it as three passes forward (the layer scale's multiply, the drop mask's, the add:
13 bytes read or written per element, each an fp32 intermediate) and five backward (the two multiplies'
gradients, gamma's reduction, the branch gradient's cast to bf16): here one pass each way, 10 bytes forward
(read x and branch, write out) and 8 backward (read the gradient and branch, write the branch's gradient;
gamma's sum is taken in the same pass). x's gradient is the output's, passed on as is. Saved for the backward:
branch, as the eager multiply saves it; without gamma nothing of the block's size (the branch's gradient is the
output's times keep: 6 bytes backward, the branch not read).
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
    unread_pointer,
    use_triton,
)

_TILE = 4096  # elements per program tile (C is held whole; positions fill the rest)


@triton.jit
def _scaled_residual_fwd(
    x_ptr,
    branch_ptr,
    gamma_ptr,
    keep_ptr,
    out_ptr,
    keep_scale,
    C,
    S,
    sxb,
    sxc,
    sxs,
    sbb,
    sbc,
    sbs,
    sob,
    soc,
    sos,
    HAS_GAMMA: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    cm = c < C
    m = cm[:, None] & (s < S)[None, :]
    x = tl.load(x_ptr + b * sxb + c[:, None] * sxc + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
    br = tl.load(branch_ptr + b * sbb + c[:, None] * sbc + s[None, :] * sbs, mask=m, other=0.0).to(tl.float32)
    if HAS_GAMMA:
        factor = tl.load(gamma_ptr + c, mask=cm, other=0.0).to(tl.float32)
        if HAS_KEEP:
            factor = factor * (tl.load(keep_ptr + b).to(tl.float32) * keep_scale)
        out = x + br * factor[:, None]
    elif HAS_KEEP:
        out = x + br * (tl.load(keep_ptr + b).to(tl.float32) * keep_scale)
    else:
        out = x + br
    tl.store(out_ptr + b * sob + c[:, None] * soc + s[None, :] * sos, out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _scaled_residual_bwd(
    dout_ptr,
    branch_ptr,
    gamma_ptr,
    keep_ptr,
    dbranch_ptr,
    partial_ptr,
    keep_scale,
    C,
    S,
    n_split,
    sdb,
    sdc,
    sds,
    sbb,
    sbc,
    sbs,
    sgb,
    sgc,
    sgs,
    HAS_GAMMA: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCKS_PER_PROGRAM: tl.constexpr,
):
    """Program (p, b) covers BLOCKS_PER_PROGRAM position blocks of sample b: writes the branch's gradient there and
    an fp32 partial sum of gamma's gradient per channel (with gamma), which the caller sums in a fixed order. Without
    gamma the branch is not read and no partial written (branch_ptr, gamma_ptr, partial_ptr never read). The trip count
    is constexpr because Triton's interpreter cannot loop to a runtime bound under numpy >= 2.4."""
    p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    if HAS_GAMMA:
        gamma = tl.load(gamma_ptr + c, mask=cm, other=0.0).to(tl.float32)
    keep = 1.0
    if HAS_KEEP:
        keep = tl.load(keep_ptr + b).to(tl.float32) * keep_scale
    dgamma = tl.zeros([BLOCK_C], dtype=tl.float32)
    for i in range(0, BLOCKS_PER_PROGRAM):
        s = (p * BLOCKS_PER_PROGRAM + i) * BLOCK_S + tl.arange(0, BLOCK_S)
        m = cm[:, None] & (s < S)[None, :]
        g = tl.load(dout_ptr + b * sdb + c[:, None] * sdc + s[None, :] * sds, mask=m, other=0.0).to(tl.float32)
        g = g * keep
        dbranch = g
        if HAS_GAMMA:
            br = tl.load(branch_ptr + b * sbb + c[:, None] * sbc + s[None, :] * sbs, mask=m, other=0.0).to(tl.float32)
            dbranch = g * gamma[:, None]
            dgamma += tl.sum(g * br, axis=1)
        tl.store(
            dbranch_ptr + b * sgb + c[:, None] * sgc + s[None, :] * sgs,
            dbranch.to(dbranch_ptr.dtype.element_ty),
            mask=m,
        )
    if HAS_GAMMA:
        tl.store(partial_ptr + (b * n_split + p) * C + c, dgamma, mask=cm)


def _blocks(C: int, S: int) -> tuple[int, int, int]:
    return channel_tile(C, S, _TILE)  # _TILE read at the call: the tests shrink it


def _launch_forward(x, branch, gamma, keep, keep_scale):
    """out of the Triton forward. keep None: no stochastic depth (HAS_KEEP off); gamma None: none (HAS_GAMMA off).
    A pointer an operand lacks is given ``unread_pointer``."""
    x3, b3 = spatial_flat(x), spatial_flat(branch)
    B, C, S = x3.shape
    block_c, block_s, warps = _blocks(C, S)
    unused = unread_pointer(x.device)
    dtype = torch.promote_types(x.dtype, branch.dtype)
    out = torch.empty_like(x, dtype=dtype if gamma is None else torch.promote_types(dtype, gamma.dtype))
    o3 = spatial_flat(out)
    _scaled_residual_fwd[(triton.cdiv(S, block_s), B)](
        x3,
        b3,
        unused if gamma is None else gamma.contiguous(),
        unused if keep is None else keep.contiguous(),
        o3,
        float(keep_scale),
        C,
        S,
        *x3.stride(),
        *b3.stride(),
        *o3.stride(),
        HAS_GAMMA=gamma is not None,
        HAS_KEEP=keep is not None,
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        num_warps=warps,
    )
    return out


def _launch_backward(dout, dbranch, branch, gamma, keep, keep_scale):
    """Writes the branch's gradient into dbranch (the branch's layout and dtype); returns the fp32 partial sums of
    gamma's gradient (None without gamma, when branch is not read either and may be None)."""
    d3, g3 = spatial_flat(dout), spatial_flat(dbranch)
    b3 = g3 if branch is None else spatial_flat(branch)  # without gamma only its strides are passed
    B, C, S = g3.shape
    block_c, block_s, warps = _blocks(C, S)
    per_program, n_split = reduction_split(triton.cdiv(S, block_s), B, sm_count(g3.device))
    unused = unread_pointer(dout.device)
    partial = None if gamma is None else torch.empty(B, n_split, C, device=g3.device, dtype=torch.float32)
    _scaled_residual_bwd[(n_split, B)](
        d3,
        unused if branch is None else b3,
        unused if gamma is None else gamma,
        unused if keep is None else keep,
        g3,
        unused if partial is None else partial,
        float(keep_scale),
        C,
        S,
        n_split,
        *d3.stride(),
        *b3.stride(),
        *g3.stride(),
        HAS_GAMMA=gamma is not None,
        HAS_KEEP=keep is not None,
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        BLOCKS_PER_PROGRAM=per_program,
        num_warps=warps,
    )
    return partial


class _ScaledResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, branch, gamma, keep, keep_scale):
        out = _launch_forward(x, branch, gamma, keep, keep_scale)
        if gamma is None:  # the branch's gradient needs only its layout, not its values
            ctx.save_for_backward(keep)
            ctx.branch_like = (branch.shape, branch.stride(), branch.dtype)
        else:
            ctx.save_for_backward(keep, branch, gamma)
        ctx.x_dtype, ctx.keep_scale = x.dtype, keep_scale
        return out

    @staticmethod
    def backward(ctx, dout):
        keep, *scaled = ctx.saved_tensors
        branch, gamma = scaled if scaled else (None, None)
        if branch is None:
            shape, stride, dtype = ctx.branch_like
            dbranch = torch.empty_strided(shape, stride, dtype=dtype, device=dout.device)
        else:
            dbranch = torch.empty_like(branch)  # the branch's strides (a channels-last view stays one)
        partial = _launch_backward(dout, dbranch, branch, gamma, keep, ctx.keep_scale)
        dx = dout if dout.dtype == ctx.x_dtype else dout.to(ctx.x_dtype)
        dgamma = None if gamma is None else partial.sum((0, 1)).to(gamma.dtype)
        return dx, dbranch, dgamma, None, None


def _kernel_takes(x: torch.Tensor) -> bool:
    return x.numel() > 0 and x.dtype in FLOAT_DTYPES and use_triton(x)


def dropped_residual_forward(
    x: torch.Tensor, branch: torch.Tensor, keep: torch.Tensor | None, keep_scale: float = 1.0
) -> torch.Tensor:
    """``x + branch * keep[b] * keep_scale`` (``scaled_residual`` without gamma) outside autograd: for ops whose own
    backward takes the residual's in (``kernels.convnext_block``), with ``dropped_residual_backward``."""
    if _kernel_takes(x):
        return _launch_forward(x, branch, None, keep, keep_scale)
    return scaled_residual_reference(x, branch, None, keep, keep_scale)


def dropped_residual_backward(
    dout: torch.Tensor, keep: torch.Tensor | None, out: torch.Tensor, keep_scale: float = 1.0
) -> torch.Tensor:
    """The branch's gradient of ``dropped_residual_forward``, ``dout * keep[b] * keep_scale``, written into out (in
    the branch's dtype and layout) and returned; x's is dout itself."""
    if _kernel_takes(dout):
        _launch_backward(dout, out, None, None, keep, keep_scale)
        return out
    factor = _factor(keep, keep_scale)
    return out.copy_(dout if factor is None else dout * factor.view(-1, *(1,) * (dout.dim() - 1)))


def _factor(keep: torch.Tensor | None, keep_scale: float) -> torch.Tensor | None:
    """keep * keep_scale, the per-sample factor (keep itself for a scale of 1)."""
    return keep if keep is None or keep_scale == 1.0 else keep * keep_scale


def scaled_residual_reference(
    x: torch.Tensor,
    branch: torch.Tensor,
    gamma: torch.Tensor | None,
    keep: torch.Tensor | None = None,
    keep_scale: float = 1.0,
) -> torch.Tensor:
    """Plain torch, the block's eager ops in their order (on the CPU path exactly what the block computed before
    the kernel existed): ``x + (gamma * branch) * (keep * keep_scale)``."""
    keep = _factor(keep, keep_scale)
    scaled = branch if gamma is None else gamma.view(-1, *(1,) * (x.dim() - 2)) * branch
    if keep is not None:
        scaled = scaled * keep.view(-1, *(1,) * (x.dim() - 1))
    return x + scaled


def scaled_residual(
    x: torch.Tensor,
    branch: torch.Tensor,
    gamma: torch.Tensor | None,
    keep: torch.Tensor | None = None,
    keep_scale: float = 1.0,
) -> torch.Tensor:
    """``x + branch * gamma[c] * keep[b] * keep_scale``, in the dtype torch promotes x, branch and gamma to.

    x, branch: (B, C, *spatial) in fp32/fp16/bf16, any layouts whose spatial dims merge (contiguous,
    channels-last; others are copied); gamma: (C,), or None for 1 (a branch that scaled itself); keep: (B,)
    per-sample factor, or None for 1; keep_scale: a float all of keep is multiplied by (a drop mask of 0 and 1 and
    1 / keep probability: the multiply is made in the pass, not as an op of its own). keep takes no gradient;
    x's gradient is the output's.
    """
    B, C = check_x("scaled_residual", x)
    operands = (("branch", branch, tuple(x.shape)),) + ((("gamma", gamma, (C,)),) if gamma is not None else ())
    check_operands("scaled_residual", x, operands + ((("keep", keep, (B,)),) if keep is not None else ()))
    if x.numel() == 0 or not use_triton(x):
        return scaled_residual_reference(x, branch, gamma, keep, keep_scale)
    return _ScaledResidual.apply(x, branch, gamma, keep, keep_scale)
