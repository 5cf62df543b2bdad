"""Philox4x32-10 draws shared by the Triton kernels and their torch references, bit for bit.

Every element gets one ``tl.randint4x(seed, counter)`` with ``counter`` = its flat index + offset
(int64, so the high word is the second Philox counter word) and ``seed`` split into the two key
words. Lane 0 becomes the uniform for the keep-mask, lanes 1 and 2 the Box-Muller normal: one call
per element, independent lanes. The torch functions below recompute the same integer stream with
int64 arithmetic and convert it exactly as ``triton.language.random`` does, so a reference that uses
them draws the same mask and (up to float rounding of log/cos) the same noise as the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.common import use_triton

MAX_SEED = 2**63  # seeds and counters are non-negative int64: Triton passes Python ints as i32/i64
_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_UNIFORM_SCALE = 4.6566127342e-10  # triton.language.random.uint_to_uniform_float, 32-bit case
_BLOCK = 1024


@triton.jit
def keep_uniform(seed, counter):
    """U[0, 1) from lane 0: the keep-mask draw (backward needs only this)."""
    r0, _, _, _ = tl.randint4x(seed, counter)
    return tl.random.uint_to_uniform_float(r0)


@triton.jit
def uniform_and_normal(seed, counter):
    """(U[0, 1) from lane 0, N(0, 1) by Box-Muller from lanes 1 and 2) for each counter."""
    r0, r1, r2, _ = tl.randint4x(seed, counter)
    u1 = tl.random.uint_to_uniform_float(r1)
    u2 = tl.random.uint_to_uniform_float(r2)
    normal, _ = tl.random.pair_uniform_to_normal(u1, u2)
    return tl.random.uint_to_uniform_float(r0), normal


@triton.jit
def _randint4x_kernel(counter_ptr, out_ptr, seed, N, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    counter = tl.load(counter_ptr + i, mask=m, other=0)
    r0, r1, r2, r3 = tl.randint4x(seed, counter)
    tl.store(out_ptr + i, r0.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + N + i, r1.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + 2 * N + i, r2.to(tl.int32, bitcast=True), mask=m)
    tl.store(out_ptr + 3 * N + i, r3.to(tl.int32, bitcast=True), mask=m)


def check_seed_offset(seed: int, offset: int, numel: int, where: str) -> None:
    """Seed and offset + numel must fit the kernels' non-negative int64 counters."""
    for name, value in (("seed", seed), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: {name} must be a Python int, got {type(value).__name__}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"{where}: seed={seed} outside [0, 2**63); reduce it, e.g. seed % 2**63")
    if not 0 <= offset <= MAX_SEED - numel:
        raise ValueError(f"{where}: offset={offset} must be >= 0 with offset + numel < 2**63")


def _mulhilo(const: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of const * x for uint32 values held in int64, without int64 overflow."""
    p_lo = const * (x & 0xFFFF)  # < 2**48
    p_hi = const * (x >> 16)  # < 2**48
    return (p_hi + (p_lo >> 16)) >> 16, (((p_hi & 0xFFFF) << 16) + p_lo) & _M32


def randint4x_reference(seed: int, counter: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 of counters (c0, c1, 0, 0) = (low, high word of counter) under key (low, high word of seed).

    counter: int64 tensor of non-negative values. Returns (4, *counter.shape) int64 holding uint32 values,
    the four lanes of ``tl.randint4x(seed, counter)``.
    """
    c0, c1 = counter & _M32, counter >> 32
    c2 = c3 = torch.zeros_like(counter)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return torch.stack((c0, c1, c2, c3))


def uniform_reference(bits: torch.Tensor) -> torch.Tensor:
    """uint32 (in int64) to float32 in [0, 1) exactly as ``tl.random.uint_to_uniform_float``."""
    signed = torch.where(bits >= 2**31, bits - 2**32, bits)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32)


def normal_reference(u1: torch.Tensor, u2: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Box-Muller cosine branch as ``tl.random.pair_uniform_to_normal``, evaluated in ``dtype``."""
    u1 = torch.clamp_min(u1, torch.tensor(1.0e-7, dtype=torch.float32)).to(dtype)
    theta = (torch.tensor(6.283185307179586, dtype=torch.float32) * u2).to(dtype)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)


def uniform_and_normal_reference(
    seed: int, counter: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (keep uniform, normal) pair of ``uniform_and_normal`` for each counter."""
    r = randint4x_reference(seed, counter)
    return uniform_reference(r[0]), normal_reference(uniform_reference(r[1]), uniform_reference(r[2]), dtype)


def randint4x(seed: int, counter: torch.Tensor) -> torch.Tensor:
    """The four Philox lanes for int64 ``counter`` (any shape) as (4, *shape) int64 uint32 values.

    Runs the Triton generator the kernels use (or the reference, by ``kernels.common.use_triton``); exists so
    tests can compare the device stream with an independent Philox bit for bit.
    """
    if counter.dtype != torch.int64:
        raise TypeError(f"randint4x: counter must be int64, got {counter.dtype}")
    check_seed_offset(seed, 0, 0, "randint4x")
    if bool((counter < 0).any()):
        raise ValueError("randint4x: counters must be non-negative")
    if not use_triton(counter):
        return randint4x_reference(seed, counter)
    flat = counter.reshape(-1).contiguous()
    out = torch.empty(4, flat.numel(), dtype=torch.int32, device=counter.device)
    _randint4x_kernel[(triton.cdiv(flat.numel(), _BLOCK),)](flat, out, seed, flat.numel(), BLOCK=_BLOCK)
    return (out.to(torch.int64) & _M32).view(4, *counter.shape)
