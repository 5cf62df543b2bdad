"""The noise schedules a latent run may train with (``--noise``), as one table: name -> sampler.

Each sampler draws one noise level per sample of a step, ``(batch, generator, device) -> NoiseLevels``, from
the generator the step's key seeded. Adding a schedule is one entry here; the option's choices are the
table's keys.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from kernels import c_noise
from kernels.noise_levels import NoiseLevels, karras_sigmas, sample_edm_lognormal, sample_karras, sample_vp

N_LEVELS = 32  # the paper's discrete Karras levels

NoiseSchedule = Callable[[int, torch.Generator, torch.device], NoiseLevels]


def no_noise(batch: int, generator: torch.Generator, device: torch.device) -> NoiseLevels:
    """No noise: every sample clean, embedded as the lowest Karras level (sigma 0.002), the trained range's end."""
    zeros = torch.zeros(batch, device=device)
    return NoiseLevels(zeros + 1, zeros, c_noise(zeros + karras_sigmas(N_LEVELS)[-1].item()), None)


NOISE_SCHEDULES: dict[str, NoiseSchedule] = {
    "karras": functools.partial(sample_karras, n=N_LEVELS),  # the paper: uniform over the 32 Karras levels
    "edm": sample_edm_lognormal,  # EDM's log-normal training levels
    "vp-linear": functools.partial(sample_vp, schedule="linear"),  # DDPM variance preserving, linear betas
    "vp-cosine": functools.partial(sample_vp, schedule="cosine"),
    "none": no_noise,
}
NOISE = tuple(NOISE_SCHEDULES)  # the --noise choices
