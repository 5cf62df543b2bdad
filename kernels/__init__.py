"""Fused Triton kernels with autograd wrappers and plain-torch references (imports torch and triton only).

Exported: the ops the models and the training inputs call. ``kernels.film`` is not among them: no model
calls it, it is the unfused baseline `bench kernels` times beside the fused ops (import it by its module).
"""

from kernels.adaln_modulate import adaln_modulate
from kernels.add_noise import add_noise
from kernels.film_layer_norm import channel_layer_norm, film_layer_norm
from kernels.group_norm_film_silu import group_norm_film_silu
from kernels.linear_gelu import linear_gelu
from kernels.noise_levels import (
    NoiseLevels,
    c_noise,
    karras_levels,
    karras_sigmas,
    sample_edm_lognormal,
    sample_karras,
    sample_vp,
    vp_alphas_cumprod,
    vp_levels,
)
from kernels.scaled_residual import scaled_residual

__all__ = [
    "NoiseLevels",
    "adaln_modulate",
    "add_noise",
    "c_noise",
    "channel_layer_norm",
    "film_layer_norm",
    "group_norm_film_silu",
    "karras_levels",
    "karras_sigmas",
    "linear_gelu",
    "sample_edm_lognormal",
    "sample_karras",
    "sample_vp",
    "scaled_residual",
    "vp_alphas_cumprod",
    "vp_levels",
]
