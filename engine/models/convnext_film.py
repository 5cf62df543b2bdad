"""The paper's latent classifier: ConvNeXt-Tiny with a latent stem and FiLM noise conditioning.

Parameter names are torchvision's ``convnext_tiny`` (``features.*``, ``classifier.0/2``), so ImageNet
weights load by name (``engine.models.pretrained``); timm's and the paper's own checkpoint names are
mapped by ``rename_pretrained``. The stem is a patchify Conv2d(C_latent, 96, k=s, stride=s): s = 4 as in
the paper; latents under 32 px get s = 2 or 1 so that stage 4 still has at least 1x1 positions.

Each stage ends in FiLM ``h * (1 + gamma) + beta``, (gamma, beta) = Linear_s(e) zero-initialised, fused
with the LayerNorm that follows it (``kernels.film_layer_norm``): the norm that opens the next
downsampling layer, and after stage 4 the head's norm. torchvision pools before that head norm; FiLM is a
per-(sample, channel) affine map and average pooling is linear, so pooling first and then applying
FiLM + LayerNorm to the (B, 768, 1, 1) result equals the paper's FiLM-then-pool exactly, at 1/HW the cost.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UsageError
from engine.models.memory import is_lean
from engine.models.noise_embedding import NoiseEmbedding, resolve_c_noise
from kernels import channel_layer_norm, film_layer_norm, linear_gelu, scaled_residual
from kernels.convnext_block import convnext_block
from kernels.layer_norm_keeping_input import layer_norm_keeping_input
from kernels.scaled_residual import scaled_residual_reference

CONVNEXT_T = {"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768)}
# The paper's Tiny and timm's smaller widths and depths (timm's convnext.py: atto, femto, pico, nano). timm builds
# those four with conv_mlp=True (1x1 convs for the MLP); the block here stays the torchvision one, Linear layers.
CONVNEXT_PRESETS = {
    "convnext-atto": {"depths": (2, 2, 6, 2), "dims": (40, 80, 160, 320)},
    "convnext-femto": {"depths": (2, 2, 6, 2), "dims": (48, 96, 192, 384)},
    "convnext-pico": {"depths": (2, 2, 6, 2), "dims": (64, 128, 256, 512)},
    "convnext-nano": {"depths": (2, 2, 8, 2), "dims": (80, 160, 320, 640)},
    "convnext-t": CONVNEXT_T,
}
PAPER_STEM_STRIDE = 4


def stem_stride_for(latent_size: int | None) -> int:
    """The paper's stride 4 when the latent has >= 32 px (None: unknown, assume so); else 2 or 1."""
    if latent_size is None:
        return PAPER_STEM_STRIDE
    for stride in (4, 2, 1):
        if latent_size >= 8 * stride:
            return stride
    raise UsageError(
        f"convnext: latent_size={latent_size} is below 8 px, too small for three 2x downsamplings; use an adm-* model"
    )


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over C of (B, C, H, W) maps, as torchvision's; given (scale, shift), FiLM runs first, fused.

    lean: without FiLM it keeps its input as given (``kernels.layer_norm_keeping_input``: the stem conv's bf16
    output under autocast) instead of autocast's float32 copy of it; the same values.
    """

    def __init__(self, dim: int, eps: float, lean: bool = False):
        super().__init__(dim, eps=eps)
        self.lean = lean

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        if scale is None:
            norm = layer_norm_keeping_input if self.lean else self._layer_norm
            return norm(x.permute(0, 2, 3, 1), self.weight, self.bias, self.eps).permute(0, 3, 1, 2)
        return film_layer_norm(x, scale, shift, self.weight, self.bias, self.eps)

    def _layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, weight, bias, eps)


class Permute(nn.Module):
    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def stochastic_depth_mask(
    x: torch.Tensor, drop_prob: float, training: bool, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor | None, float]:
    """(mask, scale) of a residual branch x's stochastic depth: mask (B,) 0 where the branch is dropped (with
    drop_prob), 1 where kept, in dtype (x's by default), and the factor survivors take, 1 / keep probability as a
    float32 division gives it (torchvision's "row" mode: factor = mask * scale, which equals mask / keep in float32
    exactly, as the op it replaces computed it); (None, 1.0) when nothing is dropped (evaluation, drop_prob 0). The
    residual ops multiply by scale in their pass, so the factor costs no op of its own."""
    if not training or drop_prob == 0.0:
        return None, 1.0
    keep = 1.0 - drop_prob
    mask = x.new_empty(x.shape[0], dtype=dtype).bernoulli_(keep)
    return mask, float(np.float32(1.0) / np.float32(keep)) if keep > 0 else 1.0


class RowLayerNorm(nn.LayerNorm):
    """The block's LayerNorm over the last dim of the conv output's (B, H, W, C) view, as one pass in the conv's
    dtype (``kernels.channel_layer_norm``) written as the contiguous rows fc1 reads; on the CPU path exactly
    ``nn.LayerNorm``. Same parameters and names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_first = x.permute(0, 3, 1, 2)
        return channel_layer_norm(channels_first, self.weight, self.bias, self.eps, channels_last=True).permute(
            0, 2, 3, 1
        )


class LinearGELU(nn.Linear):
    """fc1 with the GELU after it (``kernels.linear_gelu``: the bias and GELU one pass each way on CUDA); on the
    CPU path exactly ``nn.GELU()(nn.Linear(...))``. Same parameters and names as the Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_gelu(x, self.weight, self.bias)


class Block(nn.Module):
    """ConvNeXt block: 7x7 depthwise conv, LayerNorm, MLP x4 with GELU, layer scale, stochastic depth.

    The norm (``RowLayerNorm``), fc1's bias with the GELU (``LinearGELU``) and the layer scale, drop and residual
    add (``kernels.scaled_residual``) run as one pass each way on CUDA: under bf16 autocast eager PyTorch spends
    nineteen kernels forward and backward on what those three do in six (and three small sums of per-program
    partials), mostly casts, fp32 intermediates of the block's C x H x W and a second read of fc1's 4x-wide
    gradient for its bias. fused=False builds the block from
    the eager modules instead (timm's and torchvision's ConvNeXt, what published throughputs ran): same
    parameters and names, the same values as the fused block's CPU path.

    lean: the whole block (conv, norm, MLP, layer scale, drop and residual add) runs as one ``kernels.convnext_block``
    (same parameters, same function), which keeps only the block's input in the compute dtype for the backward
    instead of seven tensors, two of them 4x wide, and reruns the depthwise conv there.
    """

    def __init__(self, dim: int, layer_scale: float, drop_prob: float, lean: bool = False, fused: bool = True):
        super().__init__()
        norm, fc1 = (RowLayerNorm, LinearGELU) if fused else (nn.LayerNorm, nn.Linear)
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            Permute(0, 2, 3, 1),
            norm(dim, eps=1e-6),
            fc1(dim, 4 * dim),
            nn.Identity() if fused else nn.GELU(),  # fused: the GELU runs inside LinearGELU; fc2 stays block.5
            nn.Linear(4 * dim, dim),
            Permute(0, 3, 1, 2),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.residual = scaled_residual if fused else scaled_residual_reference
        self.drop_prob = drop_prob
        self.lean = lean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the mask in the dtype eager's layer-scaled branch had (fp32 under autocast, where x may be bf16)
        scaled_dtype = torch.promote_types(x.dtype, self.layer_scale.dtype)
        mask, keep_scale = stochastic_depth_mask(x, self.drop_prob, self.training, scaled_dtype)
        gamma = self.layer_scale.view(-1)
        if self.lean:
            conv, _, norm, fc1, _, fc2, _ = self.block
            norm_args, weights = (norm.weight, norm.bias, norm.eps), (*fc1.parameters(), *fc2.parameters())
            return convnext_block(x, *conv.parameters(), norm_args, *weights, gamma, mask, keep_scale)
        return self.residual(x, self.block(x), gamma, mask, keep_scale)


def _timm_block(m: re.Match) -> str:
    part = {"conv_dw": "block.0", "norm": "block.2", "mlp.fc1": "block.3", "mlp.fc2": "block.5", "gamma": "layer_scale"}
    return f"features.{2 * int(m[1]) + 1}.{m[2]}.{part[m[3]]}"


# (pattern, replacement) from timm's and the paper's (classifier_train_noise_cond.py) names to ours.
_RENAMES = (
    (r"^stem\.([01])\.", r"features.0.\1."),
    (r"^stages\.(\d+)\.downsample\.([01])\.", lambda m: f"features.{2 * int(m[1])}.{m[2]}."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.(conv_dw|norm|mlp\.fc1|mlp\.fc2|gamma)", _timm_block),
    (r"^head\.norm\.", "classifier.0."),
    (r"^head\.fc\.", "classifier.2."),
    (r"^backbone\.", ""),
    (r"^time_fourier\.", "noise_embedding.fourier."),
    (r"^time_proj([12])\.", r"noise_embedding.linear\1."),
    (r"^film_projs\.", "film."),
)
_PAPER_STORE_STATS = ("mean", "std")  # the paper's per-channel latent statistics; ours live in the store manifest


class ConvNeXtFiLM(nn.Module):
    """ConvNeXt on latents; with noise_conditioned, forward(x, c_noise) applies FiLM after every stage.

    memory: "plain" or "lean" (``engine.models.memory``): lean blocks keep less for the backward, same parameters.
    fused_blocks: the plain blocks' norm, fc1 + GELU and residual as fused kernels on CUDA (``Block``); False: the
    eager modules, as timm's ConvNeXt (bench's calibration simulates the published runs that way).
    """

    # For engine.models.pretrained: names an ImageNet file lacks by design, and names whose shape may differ
    # by design (stem input channels and kernel, class count); both stay at their fresh initialisation.
    HEAD = "classifier.2"  # the last Linear: what it reads are the pooled features (engine/models/pooled_features.py)
    PRETRAINED_NEW = (r"^noise_embedding\.", r"^film\.")
    PRETRAINED_REPLACEABLE = (r"^features\.0\.0\.", r"^classifier\.2\.")

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        noise_conditioned: bool = True,
        depths: Sequence[int] = CONVNEXT_T["depths"],
        dims: Sequence[int] = CONVNEXT_T["dims"],
        stem_stride: int = PAPER_STEM_STRIDE,
        stochastic_depth_prob: float = 0.1,
        layer_scale: float = 1e-6,
        embedding_channels: int = 256,
        clean_sigma: float = 0.002,
        memory: str = "plain",
        fused_blocks: bool = True,
    ):
        super().__init__()
        lean = is_lean(memory, "convnext")
        if len(depths) != len(dims):
            raise ValueError(f"convnext: depths {tuple(depths)} and dims {tuple(dims)} must have one entry per stage")
        self.noise_conditioned = noise_conditioned
        self.stem_stride = stem_stride
        self.clean_sigma = clean_sigma
        self.num_stages = len(dims)
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, dims[0], stem_stride, stride=stem_stride), LayerNorm2d(dims[0], 1e-6, lean)
            )
        ]
        total, first = sum(depths), 0
        for stage, (depth, dim) in enumerate(zip(depths, dims)):
            drop = [stochastic_depth_prob * (first + i) / max(total - 1, 1) for i in range(depth)]
            layers.append(nn.Sequential(*(Block(dim, layer_scale, p, lean, fused_blocks) for p in drop)))
            first += depth
            if stage + 1 < len(dims):
                layers.append(nn.Sequential(LayerNorm2d(dim, 1e-6, lean), nn.Conv2d(dim, dims[stage + 1], 2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            LayerNorm2d(dims[-1], 1e-6, lean), nn.Flatten(1), nn.Linear(dims[-1], num_classes)
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if noise_conditioned:
            self.noise_embedding = NoiseEmbedding(embedding_channels)
            self.film = nn.ModuleList(nn.Linear(embedding_channels, 2 * dim) for dim in dims)
            for proj in self.film:  # identity at start: the pretrained backbone's features pass unchanged
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)

    @property
    def input_layer(self) -> nn.Module:
        """The layer the latents enter first, the stem's patchify conv: where a lean step draws its noised input."""
        return self.features[0][0]

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) latents -> (B, num_classes) logits; c_noise (B,) = ln(sigma)/4, None for clean input.

        Unconditioned models ignore c_noise.
        """
        smallest = 8 * self.stem_stride
        if x.dim() != 4 or min(x.shape[-2:]) < smallest:
            raise ValueError(
                f"convnext: input {tuple(x.shape)} must be (B, C, H, W) with H, W >= {smallest} for "
                f"stem stride {self.stem_stride}; build it with latent_size=<H> to pick a smaller stride"
            )
        film = None
        if self.noise_conditioned:
            e = self.noise_embedding(resolve_c_noise(c_noise, x, self.clean_sigma))
            film = [proj(e).chunk(2, dim=1) for proj in self.film]
        x = self.features[0](x)
        for stage in range(self.num_stages):
            x = self.features[2 * stage + 1](x)
            scale, shift = film[stage] if film else (None, None)
            if stage + 1 < self.num_stages:
                norm, downsample = self.features[2 * stage + 2]
                x = downsample(norm(x, scale, shift))
            else:
                x = self.classifier[0](self.avgpool(x), scale, shift)
        return self.classifier[2](self.classifier[1](x))

    @staticmethod
    def rename_pretrained(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision names pass through; timm's (stem., stages.N.blocks.M., head.) and the paper's
        (backbone., time_fourier., time_proj1/2., film_projs.) become ours."""
        renamed = {}
        for key, value in state.items():
            if key in _PAPER_STORE_STATS:
                continue
            for pattern, replacement in _RENAMES:
                key = re.sub(pattern, replacement, key)
            if key.endswith(".layer_scale") and value.dim() == 1:  # timm keeps gamma as (C,)
                value = value.view(-1, 1, 1)
            renamed[key] = value
        return renamed
