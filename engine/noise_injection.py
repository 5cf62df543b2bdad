"""Turn a batch of stored latents into the classifier's input: standardise, mask, noise, in one pass.

Noise levels and the Philox stream are keyed by (seed, step), never by a running RNG, so a resumed
run draws exactly what the uninterrupted one drew. ``precondition`` applies EDM's input scaling
c_in = 1 / sqrt(alpha^2 target_std^2 + sigma^2) (not in the paper): without it, inputs at sigma 80
have std 80 and drown what the low-sigma samples teach. add_noise is linear in alpha and sigma, so
the scaling rides along in the same pass.
"""
from __future__ import annotations

import torch

from kernels import add_noise, c_noise
from kernels.noise_levels import NoiseLevels, karras_levels, karras_sigmas, sample_edm_lognormal, sample_karras, sample_vp

N_LEVELS = 32  # the paper's discrete Karras levels


class NoiseInjector:
    def __init__(self, family: str, mean: list[float], std: list[float], device: torch.device,
                 mask_p: float = 0.2, target_std: float = 0.5, seed: int = 0, precondition: bool = False):
        self.family, self.mask_p, self.target_std, self.seed = family, mask_p, target_std, seed
        self.precondition = precondition
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(std, dtype=torch.float32, device=device)
        self.device = device

    def _key(self, step: int, stream: int) -> int:
        return (self.seed * 1_000_003 + step * 7 + stream) % (2**62)

    def levels(self, batch: int, step: int) -> NoiseLevels:
        g = torch.Generator(device="cpu").manual_seed(self._key(step, 1))
        if self.family == "karras":
            return sample_karras(batch, g, self.device, n=N_LEVELS)
        if self.family == "edm":
            return sample_edm_lognormal(batch, g, self.device)
        if self.family in ("vp-linear", "vp-cosine"):
            return sample_vp(batch, g, self.device, schedule=self.family.split("-")[1])
        zeros = torch.zeros(batch, device=self.device)
        return NoiseLevels(zeros + 1, zeros, c_noise(zeros + karras_sigmas(N_LEVELS)[-1].item()), None)

    def _scaled(self, lv: NoiseLevels) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.precondition:
            return lv.alpha, lv.sigma
        c_in = (lv.alpha.square() * self.target_std**2 + lv.sigma.square()).rsqrt()
        return lv.alpha * c_in, lv.sigma * c_in

    def train_input(self, latents: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(noised masked standardised latents, c_noise) for training step ``step``."""
        lv = self.levels(latents.shape[0], step)
        alpha, sigma = self._scaled(lv)
        x = add_noise(latents, self.mean, self.std, alpha, sigma, seed=self._key(step, 2),
                      mask_p=self.mask_p, target_std=self.target_std)
        return x, lv.c_noise

    def eval_input(self, latents: torch.Tensor, level: int, salt: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Input at Karras level ``level`` (N_LEVELS - 1 = the lowest trained sigma, the 'clean' evaluation)."""
        index = torch.full((latents.shape[0],), level, dtype=torch.long, device=self.device)
        lv = karras_levels(index, N_LEVELS)
        alpha, sigma = self._scaled(lv)
        x = add_noise(latents, self.mean, self.std, alpha, sigma, seed=self._key(salt, 3 + level),
                      mask_p=0.0, target_std=self.target_std)
        return x, lv.c_noise

    @staticmethod
    def sigmas() -> list[float]:
        return karras_sigmas(N_LEVELS).tolist()
