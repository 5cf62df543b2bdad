"""Per-sample noise levels ``(alpha, sigma)`` and the embedding input ``c_noise`` for ``add_noise``.

Three families, all as ``x_t = alpha * x + sigma * eps``:
- the paper's 32 discrete EDM/Karras levels (variance exploding, alpha = 1), uniform over levels;
- continuous EDM training levels, ln(sigma) ~ N(P_mean, P_std^2) (alpha = 1);
- DDPM-style variance preserving schedules, linear and cosine: alpha = sqrt(alphabar_t),
  sigma = sqrt(1 - alphabar_t), t uniform over the discrete timesteps.
``c_noise = ln(sigma / alpha) / 4`` as in EDM2: sigma / alpha is the equivalent VE level of a VP
sample, so one embedding serves every family. Tables are built on the target device with torch
ops (tiny), so sampling a step does no host-device copy when the generator lives on that device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

VP_SCHEDULES = ("linear", "cosine")


class NoiseLevels(NamedTuple):
    alpha: torch.Tensor  # (B,) fp32 signal scale
    sigma: torch.Tensor  # (B,) fp32 noise scale
    c_noise: torch.Tensor  # (B,) fp32 embedding input ln(sigma / alpha) / 4
    level: torch.Tensor | None  # (B,) int64 index into the discrete table; None for continuous levels


def karras_sigmas(
    n: int = 32,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The n EDM/Karras levels, float64, from sigma_max (index 0) down to sigma_min (index n-1), as in EDM and
    the paper."""
    if n < 2 or not 0 < sigma_min < sigma_max or rho <= 0:
        raise ValueError(
            f"karras_sigmas: need n >= 2, 0 < sigma_min < sigma_max, rho > 0; got n={n}, "
            f"sigma_min={sigma_min}, sigma_max={sigma_max}, rho={rho}"
        )
    ramp = torch.arange(n, dtype=torch.float64, device=device) / (n - 1)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def vp_alphas_cumprod(
    schedule: str = "linear",
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    max_beta: float = 0.999,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """alphabar_t for t = 0 .. num_timesteps-1, float64: DDPM linear betas, or the cosine schedule of
    Nichol & Dhariwal (s = 0.008, betas capped at max_beta), as diffusers' ``DDPMScheduler`` builds them."""
    if schedule not in VP_SCHEDULES:
        raise ValueError(f"vp_alphas_cumprod: schedule={schedule!r}; use one of {', '.join(VP_SCHEDULES)}")
    if num_timesteps < 2:
        raise ValueError(f"vp_alphas_cumprod: num_timesteps={num_timesteps} must be >= 2")
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64, device=device)
    else:
        t = torch.arange(num_timesteps + 1, dtype=torch.float64, device=device) / num_timesteps
        alphabar = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.clamp_max(1 - alphabar[1:] / alphabar[:-1], max_beta)
    return torch.cumprod(1 - betas, dim=0)


def c_noise(sigma: torch.Tensor, alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
    """EDM2's embedding input ln(sigma / alpha) / 4 (sigma / alpha: the VE level of a VP sample)."""
    return torch.log(sigma / alpha) / 4


def _levels(alpha: torch.Tensor, sigma: torch.Tensor, level: torch.Tensor | None) -> NoiseLevels:
    """float64 (alpha, sigma) to fp32 NoiseLevels, c_noise computed before rounding."""
    f32 = torch.float32
    return NoiseLevels(alpha.to(f32), sigma.to(f32), c_noise(sigma, alpha).to(f32), level)


def _check_indices(where: str, name: str, index: torch.Tensor, n: int) -> None:
    """int64 indices in [0, n); the range is checked on the host only (on a GPU it would cost a sync
    every step; a bad index there fails as a device-side assert)."""
    if not isinstance(index, torch.Tensor) or index.dtype != torch.int64:
        raise TypeError(f"{where}: {name} must be an int64 tensor of indices in [0, {n})")
    if not index.is_cuda and bool(((index < 0) | (index >= n)).any()):
        raise ValueError(f"{where}: {name} has entries outside [0, {n})")


def karras_levels(
    level: torch.Tensor, n: int = 32, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> NoiseLevels:
    """NoiseLevels at given Karras level indices (0 = sigma_max), e.g. to evaluate at each level in turn."""
    _check_indices("karras_levels", "level", level, n)
    sigma = karras_sigmas(n, sigma_min, sigma_max, rho, device=level.device)[level]
    return _levels(torch.ones_like(sigma), sigma, level)


def vp_levels(
    timestep: torch.Tensor,
    schedule: str = "linear",
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> NoiseLevels:
    """NoiseLevels at given DDPM timesteps: alpha = sqrt(alphabar_t), sigma = sqrt(1 - alphabar_t)."""
    _check_indices("vp_levels", "timestep", timestep, num_timesteps)
    alphabar = vp_alphas_cumprod(schedule, num_timesteps, beta_start, beta_end, device=timestep.device)[timestep]
    return _levels(alphabar.sqrt(), (1 - alphabar).sqrt(), timestep)


def _generator(generator: torch.Generator | int, device: torch.device | str | None) -> torch.Generator:
    """A seed becomes a generator on ``device``; a generator is used where it lives."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(
            f"noise levels: generator must be a torch.Generator or an int seed, got {type(generator).__name__}"
        )
    return torch.Generator(device=device or "cpu").manual_seed(generator)


def _on(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    return t if device is None else t.to(device, non_blocking=True)


def sample_karras(
    batch: int,
    generator: torch.Generator | int,
    device: torch.device | str | None = None,
    n: int = 32,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> NoiseLevels:
    """The paper's training levels: one of the n Karras levels per sample, uniformly.

    Draws on the generator's device (pass one on ``device`` to keep a training step free of copies).
    """
    g = _generator(generator, device)
    level = torch.randint(n, (batch,), generator=g, device=g.device)
    return karras_levels(_on(level, device), n, sigma_min, sigma_max, rho)


def sample_edm_lognormal(
    batch: int,
    generator: torch.Generator | int,
    device: torch.device | str | None = None,
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> NoiseLevels:
    """EDM's continuous training levels: sigma = exp(p_mean + p_std * N(0, 1)), alpha = 1."""
    g = _generator(generator, device)
    log_sigma = p_mean + p_std * torch.randn(batch, generator=g, device=g.device, dtype=torch.float64)
    sigma = _on(log_sigma, device).exp()
    return _levels(torch.ones_like(sigma), sigma, None)


def sample_vp(
    batch: int,
    generator: torch.Generator | int,
    device: torch.device | str | None = None,
    schedule: str = "linear",
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> NoiseLevels:
    """DDPM-style training levels: timestep uniform over [0, num_timesteps) of the linear or cosine schedule."""
    g = _generator(generator, device)
    timestep = torch.randint(num_timesteps, (batch,), generator=g, device=g.device)
    return vp_levels(_on(timestep, device), schedule, num_timesteps, beta_start, beta_end)
