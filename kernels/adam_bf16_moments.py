"""Adam's update from moments stored in bf16, one Triton pass over a flat piece: ``Bf16MomentAdam``'s step on CUDA.

In torch ops (``engine.training.optimizers``) a piece's update is ~19 kernels: the two moments widened to fp32,
scaled and accumulated, each rounded to bf16 stochastically (random bits, an add and a mask, a cast, a copy back),
the denominator in three passes and the parameters' addcdiv. Here the gradient and both moments, gathered into
flat buffers, are read once and written once: the moments back in bf16, rounded stochastically with Philox bits
(``kernels.philox``: lane 0 of ``tl.randint4x(seed, counter)`` for the second moment, lane 1 for the first), and
Adam's step ``-lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`` over the gradient's buffer, for one
multi-tensor add into the parameters.

The same arithmetic as the torch ops, op for op (CUDA's ``_foreach_addcmul_`` and ``lerp`` forms); a compiled
kernel may contract a multiply and an add into one rounding where the torch ops round twice, so the device
agrees with ``adam_bf16_moments_reference`` to about an ulp, and the interpreter bit for bit.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels.philox import check_seed_offset

_BLOCK = 1024


@triton.jit
def _stochastic_bf16(x, r):
    """x (fp32) rounded to bf16 up in magnitude with probability equal to the dropped fraction: 16 random bits
    added below bf16's mantissa, then truncated there (the torch form's int32 add and mask)."""
    bits = x.to(tl.int32, bitcast=True) + (r & 0xFFFF).to(tl.int32)
    return (bits & -65536).to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def _adam_bf16_moments_kernel(
    g_ptr,
    m_ptr,
    v_ptr,
    N,
    seed,
    offset,
    beta2,
    one_minus_beta1,
    one_minus_beta2,
    sqrt_correction2,
    eps,
    step_size,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    g = tl.load(g_ptr + i, mask=mask, other=0.0)
    m = tl.load(m_ptr + i, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + i, mask=mask, other=0.0).to(tl.float32)
    v = v * beta2
    v = v + one_minus_beta2 * (g * g)
    m = m + one_minus_beta1 * (g - m)
    r0, r1, _, _ = tl.randint4x(seed, i + offset)
    tl.store(v_ptr + i, _stochastic_bf16(v, r0), mask=mask)
    tl.store(m_ptr + i, _stochastic_bf16(m, r1), mask=mask)
    # correctly rounded, as torch's: Triton's default sqrt and division are approximations on the GPU
    denominator = tl.div_rn(tl.sqrt_rn(v), sqrt_correction2) + eps
    tl.store(g_ptr + i, step_size * tl.div_rn(m, denominator), mask=mask)


def _coefficients(lr: float, betas: tuple[float, float], eps: float, step: int) -> dict[str, float]:
    beta1, beta2 = betas
    return {
        "beta2": beta2,
        "one_minus_beta1": 1 - beta1,
        "one_minus_beta2": 1 - beta2,
        "sqrt_correction2": math.sqrt(1 - beta2**step),
        "eps": eps,
        "step_size": -lr / (1 - beta1**step),
    }


def adam_bf16_moments_(
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    step: int,
    seed: int,
    offset: int,
) -> None:
    """Adam's step t=``step`` in place over flat buffers: exp_avg and exp_avg_sq (bf16) updated and rounded
    stochastically with the Philox bits of (seed, offset + index), grad (fp32) overwritten by the parameters'
    change. One launch."""
    n = grad.numel()
    for name, t, dtype in (("grad", grad, torch.float32), ("exp_avg", exp_avg, torch.bfloat16)):
        if t.dtype != dtype or t.dim() != 1 or not t.is_contiguous():
            raise ValueError(f"adam_bf16_moments_: {name} must be a contiguous 1-d {dtype} buffer")
    if exp_avg.shape != grad.shape or exp_avg_sq.shape != grad.shape or exp_avg_sq.dtype != torch.bfloat16:
        raise ValueError("adam_bf16_moments_: grad, exp_avg and exp_avg_sq must be buffers of one length")
    check_seed_offset(seed, offset, n, "adam_bf16_moments_")
    if n:
        _adam_bf16_moments_kernel[(triton.cdiv(n, _BLOCK),)](
            grad, exp_avg, exp_avg_sq, n, seed, offset, **_coefficients(lr, betas, eps, step), BLOCK=_BLOCK
        )


def stochastic_bf16_reference(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """fp32 x rounded to bf16 with random ``bits`` (integers in [0, 2**16)) per element, as ``_stochastic_bf16``."""
    added = bits.to(torch.int32) + x.contiguous().view(torch.int32)
    return added.bitwise_and_(-(1 << 16)).view(torch.float32).to(torch.bfloat16)


def adam_bf16_moments_reference(
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    step: int,
    bits: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(change of the parameters, exp_avg, exp_avg_sq) of the kernel's step in torch ops; bits: the random bits of
    the second and the first moment's rounding, in [0, 2**16) (the low 16 bits of the kernel's Philox lanes). The
    coefficients are fp32 tensors, as the kernel (and CUDA's foreach ops) take them: a Python float times a CPU
    tensor multiplies in double."""
    c = {name: torch.tensor(value, dtype=torch.float32) for name, value in _coefficients(lr, betas, eps, step).items()}
    v = exp_avg_sq.float() * c["beta2"] + c["one_minus_beta2"] * (grad * grad)
    m = exp_avg.float()
    m = m + c["one_minus_beta1"] * (grad - m)
    root = v.double().sqrt().float()  # correctly rounded, as CUDA's and the kernel's: a CPU's fp32 sqrt may not be
    change = c["step_size"] * (m / (root / c["sqrt_correction2"] + c["eps"]))
    return change, stochastic_bf16_reference(m, bits[1]), stochastic_bf16_reference(v, bits[0])
