"""Standardise, mask and noise latents in one pass:
``x_t = alpha[b] * m * target_std * (x - mean[c]) / std[c] + sigma[b] * eps``.

Eager code reads x, writes the standardised copy, materialises a mask and a noise tensor and mixes
them (five or more passes); here x is read once and x_t written once. The keep-mask m (drop
probability ``mask_p``) and eps ~ N(0, 1) come from Philox inside the kernel (``kernels.philox``),
keyed by ``seed`` with counter = flat (b, c, position) index + ``offset``, so they never touch memory
and the backward pass regenerates m instead of saving it. The counter follows the logical index, not
the memory layout: contiguous and channels-last inputs draw the same mask and noise.

Gradient: only with respect to x (``grad_out * alpha[b] * m * target_std / std[c]``, exact).
mean, std, alpha and sigma are constants of the augmentation: passing one that requires grad is an
error rather than a silently missing gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.common import FLOAT_DTYPES, check_x, plane_tile, spatial_flat, unread_pointer, use_triton
from kernels.philox import check_seed_offset, keep_uniform, uniform_and_normal, uniform_and_normal_reference

_TILE = 2048  # elements per program: 8 per thread at 8 warps (one 16-byte fp16 vector), Philox state in registers


@triton.jit
def _add_noise_fwd(
    x_ptr,
    out_ptr,
    noise_ptr,
    mean_ptr,
    std_ptr,
    alpha_ptr,
    sigma_ptr,
    seed,
    offset,
    mask_p,
    target_std,
    C,
    S,
    n_rows,
    sxb,
    sxc,
    sxs,
    sob,
    soc,
    sos,
    WRITE_NOISE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Tile of ROWS (b, c) planes x BLOCK_S positions: per-plane constants are loaded once per row."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    s = (tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    rm = rows < n_rows
    m = rm[:, None] & (s < S)[None, :]
    b, c = (rows // C).to(tl.int64), (rows % C).to(tl.int64)
    mean = tl.load(mean_ptr + c, mask=rm, other=0.0)
    gain = tl.load(alpha_ptr + b, mask=rm, other=0.0) * target_std / tl.load(std_ptr + c, mask=rm, other=1.0)
    sigma = tl.load(sigma_ptr + b, mask=rm, other=0.0)

    x = tl.load(x_ptr + (b * sxb + c * sxc)[:, None] + s[None, :] * sxs, mask=m, other=0.0).to(tl.float32)
    counter = rows.to(tl.int64)[:, None] * S + s[None, :] + offset
    u, eps = uniform_and_normal(seed, counter)
    y = tl.where(u >= mask_p, (x - mean[:, None]) * gain[:, None], 0.0) + sigma[:, None] * eps
    tl.store(out_ptr + (b * sob + c * soc)[:, None] + s[None, :] * sos, y.to(out_ptr.dtype.element_ty), mask=m)
    if WRITE_NOISE:
        tl.store(noise_ptr + rows.to(tl.int64)[:, None] * S + s[None, :], eps, mask=m)


@triton.jit
def _add_noise_bwd(
    dy_ptr,
    dx_ptr,
    std_ptr,
    alpha_ptr,
    seed,
    offset,
    mask_p,
    target_std,
    C,
    S,
    n_rows,
    sdb,
    sdc,
    sds,
    sxb,
    sxc,
    sxs,
    ROWS: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """dx = dy * alpha[b] * m * target_std / std[c], with m regenerated from (seed, offset)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    s = (tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    rm = rows < n_rows
    m = rm[:, None] & (s < S)[None, :]
    b, c = (rows // C).to(tl.int64), (rows % C).to(tl.int64)
    gain = tl.load(alpha_ptr + b, mask=rm, other=0.0) * target_std / tl.load(std_ptr + c, mask=rm, other=1.0)

    dy = tl.load(dy_ptr + (b * sdb + c * sdc)[:, None] + s[None, :] * sds, mask=m, other=0.0).to(tl.float32)
    u = keep_uniform(seed, rows.to(tl.int64)[:, None] * S + s[None, :] + offset)
    dx = tl.where(u >= mask_p, dy * gain[:, None], 0.0)
    tl.store(dx_ptr + (b * sxb + c * sxc)[:, None] + s[None, :] * sxs, dx.to(dx_ptr.dtype.element_ty), mask=m)


def _grid(n_rows: int, S: int) -> tuple[int, int, tuple[int, int]]:
    """(ROWS, BLOCK_S, grid) of the plane-wise add_noise kernels."""
    rows, block_s = plane_tile(n_rows, S, _TILE)
    return rows, block_s, (triton.cdiv(n_rows, rows), triton.cdiv(S, block_s))


class _AddNoise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mean, std, alpha, sigma, seed, offset, mask_p, target_std, return_noise, out_dtype):
        x3 = spatial_flat(x)
        B, C, S = x3.shape
        rows, block_s, grid = _grid(B * C, S)
        out3 = torch.empty_like(x3, dtype=out_dtype)
        noise = torch.empty(x.shape, dtype=torch.float32, device=x.device) if return_noise else unread_pointer(x.device)
        _add_noise_fwd[grid](
            x3,
            out3,
            noise,
            mean,
            std,
            alpha,
            sigma,
            seed,
            offset,
            mask_p,
            target_std,
            C,
            S,
            B * C,
            *x3.stride(),
            *out3.stride(),
            WRITE_NOISE=return_noise,
            ROWS=rows,
            BLOCK_S=block_s,
            num_warps=8 if rows * block_s >= 2048 else 4,
        )
        ctx.save_for_backward(std, alpha)
        ctx.rng = (seed, offset, mask_p, target_std)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        if return_noise:
            ctx.mark_non_differentiable(noise)
            return out3.view(x.shape), noise
        return out3.view(x.shape)

    @staticmethod
    def backward(ctx, dy, *_):
        std, alpha = ctx.saved_tensors
        seed, offset, mask_p, target_std = ctx.rng
        dy3 = spatial_flat(dy)
        B, C, S = dy3.shape
        rows, block_s, grid = _grid(B * C, S)
        dx3 = torch.empty_like(dy3, dtype=ctx.x_dtype)
        _add_noise_bwd[grid](
            dy3,
            dx3,
            std,
            alpha,
            seed,
            offset,
            mask_p,
            target_std,
            C,
            S,
            B * C,
            *dy3.stride(),
            *dx3.stride(),
            ROWS=rows,
            BLOCK_S=block_s,
            num_warps=8 if rows * block_s >= 2048 else 4,
        )
        return dx3.view(ctx.x_shape), None, None, None, None, None, None, None, None, None, None


def add_noise_reference(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    seed: int,
    offset: int = 0,
    mask_p: float = 0.0,
    target_std: float = 1.0,
    return_noise: bool = False,
    out_dtype: torch.dtype | None = None,
):
    """Plain torch with the kernel's Philox draws; math in fp32 (fp64 for fp64 x: the test oracle).

    alpha, sigma: (B,) tensors. Returns out_dtype (x's by default); eps (if asked) in the math dtype. Autograd
    flows to every tensor input here (useful for gradcheck); the public function allows x only.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    B, C = x.shape[:2]
    per_channel = (1, C) + (1,) * (x.dim() - 2)
    per_sample = (B,) + (1,) * (x.dim() - 1)
    counter = torch.arange(x.numel(), dtype=torch.int64, device=x.device).view(x.shape) + offset
    u, eps = uniform_and_normal_reference(seed, counter, dtype)
    keep = (u >= torch.tensor(mask_p, dtype=torch.float32)).to(dtype)
    z = (x.to(dtype) - mean.to(dtype).view(per_channel)) / std.to(dtype).view(per_channel)
    out = alpha.to(dtype).view(per_sample) * keep * target_std * z + sigma.to(dtype).view(per_sample) * eps
    out = out.to(out_dtype or x.dtype)
    return (out, eps) if return_noise else out


def _check_std_positive(std: torch.Tensor) -> None:
    """Reject zero, negative or NaN entries. Checking costs a device sync, so the tensor remembers the
    version it was found positive at: a persistent statistics tensor pays once, not every step."""
    if getattr(std, "_add_noise_positive_version", None) == std._version:
        return
    if std.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if not bool((std > 0).all()):
        raise ValueError(
            "add_noise: std has zero, negative or NaN entries; clamp the channel statistics, e.g. std.clamp_min(1e-6)"
        )
    std._add_noise_positive_version = std._version


def _per_sample(v, B: int, device: torch.device):
    """A Python float becomes a (B,) fp32 tensor and a 0-d tensor is broadcast; anything else is checked later."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return torch.full((B,), float(v), dtype=torch.float32, device=device)
    if isinstance(v, torch.Tensor) and v.dim() == 0:
        return v.expand(B)
    return v


def _check(x: torch.Tensor, tensors: dict, mask_p: float, target_std: float) -> None:
    B, C = x.shape[:2]
    for name, t in tensors.items():
        shape = (C,) if name in ("mean", "std") else (B,)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"add_noise: {name} must be a tensor of shape {shape}, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"add_noise: {name} has shape {tuple(t.shape)}, expected {shape} for x {tuple(x.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"add_noise: {name} is {t.dtype}; use a floating-point tensor (float32)")
        if t.device != x.device:
            raise ValueError(f"add_noise: {name} is on {t.device} but x is on {x.device}; put all inputs on one device")
        if t.requires_grad:
            raise ValueError(f"add_noise: {name} requires grad, but only x gets a gradient; pass {name}.detach()")
    if not (isinstance(mask_p, (int, float)) and 0.0 <= mask_p < 1.0):
        raise ValueError(f"add_noise: mask_p={mask_p!r} outside [0, 1); it is the probability of dropping an element")
    if not (isinstance(target_std, (int, float)) and 0.0 < target_std < float("inf")):
        raise ValueError(f"add_noise: target_std={target_std!r} must be a positive finite float")


def add_noise(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    alpha,
    sigma,
    seed: int,
    offset: int = 0,
    mask_p: float = 0.0,
    target_std: float = 1.0,
    return_noise: bool = False,
    out_dtype: torch.dtype | None = None,
):
    """Noised, masked, standardised latents ``alpha[b] * m * target_std * (x - mean[c]) / std[c] + sigma[b] * eps``.

    x: (B, C, H, W) or (B, C, T, H, W), fp32/fp16/bf16; the math is fp32, the result rounded once to out_dtype
    (fp32/fp16/bf16, x's by default: a network computing in another dtype gets its input without a second pass);
    x's gradient in x's dtype.
    mean, std: (C,) float tensors. alpha, sigma: (B,) float tensors, or Python floats for all samples.
    seed, offset: non-negative ints; element i (flat (b, c, position) index) uses Philox counter
    i + offset, so consecutive calls can share a seed and advance offset by x.numel().
    mask_p: probability in [0, 1) of dropping an element (m = 0), without rescaling the kept ones.
    return_noise: also return eps (fp32, x's shape, contiguous), materialised only then.
    Strides are handled in the kernel when the spatial dims merge into one strided axis
    (contiguous and channels-last do; the output keeps that layout); other layouts are copied first.
    The small per-channel/per-sample tensors are made contiguous fp32.
    """
    check_x("add_noise", x, dims=(4, 5))
    if out_dtype not in (None, *FLOAT_DTYPES):
        raise TypeError(f"add_noise: out_dtype={out_dtype}; use float32, float16 or bfloat16 (or None for x's)")
    alpha, sigma = (_per_sample(v, x.shape[0], x.device) for v in (alpha, sigma))
    _check(x, {"mean": mean, "std": std, "alpha": alpha, "sigma": sigma}, mask_p, target_std)
    check_seed_offset(seed, offset, x.numel(), "add_noise")
    _check_std_positive(std)
    if not use_triton(x):
        return add_noise_reference(
            x, mean, std, alpha, sigma, seed, offset, mask_p, target_std, return_noise, out_dtype
        )
    mean, std, alpha, sigma = (t.to(torch.float32).contiguous() for t in (mean, std, alpha, sigma))
    rng = (seed, offset, float(mask_p), float(target_std))
    return _AddNoise.apply(x, mean, std, alpha, sigma, *rng, return_noise, out_dtype or x.dtype)
