"""The gradients of fc2 and its layer scale from those of fc2 with the scale folded in, in one pass.

``kernels.fused_mlp`` folds a ConvNeXt block's layer scale into fc2 (``gamma * W2``, ``gamma * b2``) so that no
scaled copy of fc2's output is kept for the backward. Its backward then has the folded weight's gradients (dWs, dbs)
and unfolds them: ``dW2 = gamma * dWs``, ``db2 = gamma * dbs``, ``dgamma = sum_j dWs[:, j] * W2[:, j] + dbs * b2``;
in torch ops seven small kernels a block (a cast, four multiplies, a sum, an add) on the (C, 4C) weight, most at
the launch floor. Here one program per output channel reads its row of dWs and W2 once and writes all three.

The same arithmetic as the torch ops in fp32, except the order of the row sum (a tree here); the CPU path is the
torch ops (``unfold_layer_scale_reference``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.common import use_triton


@triton.jit
def _unfold_layer_scale(dw_ptr, db_ptr, w_ptr, b_ptr, scale_ptr, db_out_ptr, dscale_ptr, N, BLOCK_N: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    n = tl.arange(0, BLOCK_N)
    m = n < N
    dw = tl.load(dw_ptr + c * N + n, mask=m, other=0.0)
    w = tl.load(w_ptr + c * N + n, mask=m, other=0.0)
    scale = tl.load(scale_ptr + c)
    db = tl.load(db_ptr + c).to(tl.float32)
    tl.store(dw_ptr + c * N + n, dw * scale, mask=m)
    tl.store(db_out_ptr + c, db * scale)
    tl.store(dscale_ptr + c, tl.sum(dw * w, axis=0) + db * tl.load(b_ptr + c))


def unfold_layer_scale_reference(
    dw_folded: torch.Tensor, db_folded: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dW2, db2, dgamma) in torch ops; dw_folded is overwritten with dW2."""
    db_folded = db_folded.to(b2.dtype)
    dscale = (dw_folded * w2).sum(1) + db_folded * b2
    return dw_folded.mul_(scale[:, None]), db_folded * scale, dscale


def unfold_layer_scale_(
    dw_folded: torch.Tensor, db_folded: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dW2, db2, dgamma) of fc2 (W2 (C, N), b2 (C,)) and its layer scale gamma (C,), given the gradients of the
    folded weight (dw_folded (C, N), overwritten with dW2) and bias (db_folded (C,), any float dtype). The Triton
    pass where ``use_triton`` says (fp32 contiguous weights), else the torch ops."""
    C, N = w2.shape
    fp32 = all(t.dtype == torch.float32 and t.is_contiguous() for t in (dw_folded, w2, b2, scale))
    if dw_folded.shape != (C, N) or db_folded.shape != (C,) or b2.shape != (C,) or scale.shape != (C,):
        raise ValueError(
            f"unfold_layer_scale_: dw {tuple(dw_folded.shape)}, db {tuple(db_folded.shape)}, b2 {tuple(b2.shape)} "
            f"and scale {tuple(scale.shape)} must be ({C}, {N}), ({C},), ({C},), ({C},) for w2 {tuple(w2.shape)}"
        )
    if not (fp32 and C and use_triton(w2)):
        return unfold_layer_scale_reference(dw_folded, db_folded, w2, b2, scale)
    db2, dscale = torch.empty_like(b2), torch.empty_like(scale)
    _unfold_layer_scale[(C,)](
        dw_folded, db_folded.contiguous(), w2, b2, scale, db2, dscale, N, BLOCK_N=triton.next_power_of_2(N)
    )
    return dw_folded, db2, dscale
