"""EDM2's magnitude-preserving noise embedding: c_noise -> Fourier features -> MP linear -> MP SiLU -> MP linear.

Magnitude preserving (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models"): every layer keeps a unit expected second moment, so the embedding has the same scale at every
noise level and all through training, and the FiLM projections that read it see inputs of a known size.
The linear weights are renormalised in place at every training forward ("forced weight normalisation"):
Adam's updates would otherwise grow their norm and quietly shrink the effective learning rate.
c_noise = ln(sigma / alpha) / 4 comes from ``kernels.noise_levels``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def normalize(w: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Each output row of w scaled to unit RMS (norm sqrt(fan_in)); norms in fp32."""
    norm = torch.linalg.vector_norm(w, dim=list(range(1, w.ndim)), keepdim=True, dtype=torch.float32)
    norm = eps + norm * math.sqrt(norm.numel() / w.numel())
    return w / norm.to(w.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU rescaled to unit second moment on N(0, 1) input (E[silu(x)^2] = 0.596^2)."""
    return F.silu(x) / 0.596


class MPFourier(nn.Module):
    """sqrt(2) cos(2 pi (f c + p)) with fixed f ~ N(0, bandwidth^2), p ~ U(0, 1): unit RMS for any c.

    The frequencies and phases are buffers, saved with the weights: a checkpoint's FiLM layers only make
    sense with the random features they were trained on.
    """

    def __init__(self, channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        y = torch.outer(c.float(), self.freqs.float()) + self.phases.float()
        return y.cos() * math.sqrt(2)


class MPLinear(nn.Module):
    """EDM2's MPConv with an empty kernel: a bias-free linear map with unit-norm rows.

    The stored weight is normalised in place when training (forced weight normalisation) and again inside
    the graph (so gradients are orthogonal to it); dividing by sqrt(fan_in) keeps unit-RMS input at unit RMS.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.force_normalised()
        w = normalize(self.weight.float()) / math.sqrt(self.weight.shape[1])
        return x @ w.to(x.dtype).t()

    @torch.compiler.disable
    @torch.no_grad()
    def force_normalised(self) -> None:
        """The stored weight's rows set to unit RMS, outside any compiled graph: a graph that holds this in-place
        step differentiates the rest at a mix of the weight before and after it (torch.compile's gradient then
        has a radial part, 0.4 % of it, that eager's lacks), so the graph breaks here and receives the weight
        normalised."""
        self.weight.copy_(normalize(self.weight.float()))


class NoiseEmbedding(nn.Module):
    """(B,) c_noise -> (B, channels) embedding with unit RMS per sample, as EDM2 embeds its noise level."""

    def __init__(self, channels: int = 256):
        super().__init__()
        self.fourier = MPFourier(channels)
        self.linear1 = MPLinear(channels, channels)
        self.linear2 = MPLinear(channels, channels)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self.linear2(mp_silu(self.linear1(self.fourier(c_noise))))


def resolve_c_noise(c_noise: torch.Tensor | None, x: torch.Tensor, clean_sigma: float) -> torch.Tensor:
    """The (B,) fp32 c_noise for batch x; None means clean input, embedded at clean_sigma.

    The paper embeds clean evaluation at sigma = 1e-5, outside the trained range; clean_sigma defaults
    to the lowest trained level (0.002) so a clean input reads a level the FiLM layers have seen.
    """
    if c_noise is None:
        return torch.full((x.shape[0],), math.log(clean_sigma) / 4, device=x.device)
    if not isinstance(c_noise, torch.Tensor) or tuple(c_noise.shape) != (x.shape[0],):
        shape = tuple(c_noise.shape) if isinstance(c_noise, torch.Tensor) else type(c_noise).__name__
        raise ValueError(
            f"c_noise must be a ({x.shape[0]},) tensor, one ln(sigma)/4 per sample (kernels.noise_levels), got {shape}"
        )
    return c_noise.to(device=x.device, dtype=torch.float32)
