"""ADM-style noise-aware ResNet for latents: the classifier of Dhariwal & Nichol's classifier guidance.

As ADM's encoder half (``EncoderUNetModel``): a 3x3 input conv, levels of residual blocks with a strided
3x3 conv between levels, self-attention at the deeper levels, a middle block (res, attention, res), then
GroupNorm + SiLU and attention pooling (or global average pooling) into a linear head. Each residual
block is ADM's scale-shift design, ``conv(silu(GN(h) * (1 + scale) + shift))`` with (scale, shift) a
per-block projection of the noise embedding; GroupNorm, FiLM and SiLU run as one fused pass
(``kernels.group_norm_film_silu``), and the block's other GroupNorm + SiLU uses the same kernel with no
FiLM. The noise embedding is EDM2's (as in the paper's ConvNeXt), so one c_noise = ln(sigma)/4 serves both.
FiLM projections and each block's last conv start at zero, so every block starts as its skip path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.memory import is_lean, recompute
from engine.models.noise_embedding import NoiseEmbedding, resolve_c_noise
from kernels import group_norm_film_silu

# adm-s fits the embedded default store's 4x8x8 latents (levels at 8, 4, 2 px); adm-b is sized for
# 64 px latents (SD, FLUX.1, FLUX.2 at 512 px: levels at 64, 32, 16, 8 px, attention at 16 and 8).
ADM_PRESETS = {
    "adm-s": {
        "channels": 64,
        "channel_mult": (1, 2, 4),
        "blocks_per_level": 1,
        "attention_levels": (2,),
        "pool": "avg",
    },
    "adm-b": {
        "channels": 128,
        "channel_mult": (1, 2, 3, 4),
        "blocks_per_level": 2,
        "attention_levels": (2, 3),
        "pool": "attention",
    },
}
POOLS = ("avg", "attention")


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNormSiLU(nn.GroupNorm):
    """silu(GroupNorm(x) * (1 + scale) + shift), fused; no (scale, shift) means no FiLM."""

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        if scale is None:
            scale = shift = x.new_zeros(x.shape[:2])
        return group_norm_film_silu(x, self.num_groups, self.weight, self.bias, scale, shift, self.eps)


class ResBlock(nn.Module):
    """ADM residual block with scale-shift norm; emb_channels None builds the unconditioned block."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int | None, groups: int):
        super().__init__()
        self.norm1 = GroupNormSiLU(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.film = _zero(nn.Linear(emb_channels, 2 * out_channels)) if emb_channels else None
        self.norm2 = GroupNormSiLU(groups, out_channels)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        scale, shift = self.film(emb).chunk(2, dim=1) if self.film is not None else (None, None)
        return self.skip(x) + self.conv2(self.norm2(h, scale, shift))


def _head_channels(channels: int, head_channels: int) -> int:
    head_channels = min(head_channels, channels)
    if channels % head_channels:
        raise ValueError(
            f"adm: attention over {channels} channels needs head_channels dividing it, got {head_channels}"
        )
    return head_channels


def _attend(qkv: torch.Tensor, head_channels: int, queries: int | None = None) -> torch.Tensor:
    """(B, 3C, N) packed q, k, v -> (B, C, Nq) multi-head attention; queries limits q to the first positions."""
    B, C3, N = qkv.shape
    heads = C3 // 3 // head_channels
    q, k, v = qkv.view(B, 3, heads, head_channels, N).transpose(-1, -2).unbind(1)
    out = F.scaled_dot_product_attention(q[..., :queries, :] if queries else q, k, v)
    return out.transpose(-1, -2).reshape(B, heads * head_channels, -1)


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over positions, output projection zero-initialised."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.head_channels = _head_channels(channels, head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = _attend(self.qkv(self.norm(x).view(B, C, H * W)), self.head_channels)
        return x + self.proj(h).view(B, C, H, W)


class AttentionPool2d(nn.Module):
    """ADM's (CLIP's) attention pooling: the mean token, with learnt positions, attends to all positions."""

    def __init__(self, channels: int, positions: int, head_channels: int):
        super().__init__()
        self.head_channels = _head_channels(channels, head_channels)
        self.positional_embedding = nn.Parameter(torch.randn(channels, positions + 1) / channels**0.5)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2)
        if x.shape[-1] + 1 != self.positional_embedding.shape[-1]:
            raise ValueError(
                f"adm: attention pooling was built for {self.positional_embedding.shape[-1] - 1} "
                f"positions, got {x.shape[-1]}; build with the latent_size of this input or pool='avg'"
            )
        x = torch.cat([x.mean(-1, keepdim=True), x], dim=-1) + self.positional_embedding.to(x.dtype)
        return self.proj(_attend(self.qkv(x), self.head_channels, queries=1))[:, :, 0]


class ADMResNet(nn.Module):
    """Noise-aware ResNet classifier for (B, C, H, W) latents; forward(x, c_noise) -> logits.

    memory: "plain" or "lean" (``engine.models.memory``): lean recomputes every block in the backward from its
    input, keeping one map per block instead of each norm's, conv's and attention's.
    """

    HEAD = "head"  # the last Linear: what it reads are the pooled features (engine/models/pooled_features.py)
    PRETRAINED_NEW = (r"^noise_embedding\.", r"\.film\.")
    PRETRAINED_REPLACEABLE = (r"^input_conv\.", r"^head\.")

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        noise_conditioned: bool = True,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4),
        blocks_per_level: int = 1,
        attention_levels: Sequence[int] = (2,),
        pool: str = "avg",
        latent_size: int | None = None,
        head_channels: int = 64,
        groups: int = 32,
        embedding_channels: int = 256,
        clean_sigma: float = 0.002,
        memory: str = "plain",
    ):
        super().__init__()
        self.lean = is_lean(memory, "adm")
        if pool not in POOLS:
            raise ValueError(f"adm: pool={pool!r}; use one of {', '.join(POOLS)}")
        if pool == "attention" and latent_size is None:
            raise ValueError(
                "adm: pool='attention' learns one position embedding per latent position; "
                "pass latent_size=<latent side in px> or use pool='avg'"
            )
        self.noise_conditioned = noise_conditioned
        self.clean_sigma = clean_sigma
        emb = embedding_channels if noise_conditioned else None
        self.input_conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        blocks: list[nn.Module] = []
        ch, side = channels, latent_size
        for level, mult in enumerate(channel_mult):
            for _ in range(blocks_per_level):
                blocks.append(ResBlock(ch, channels * mult, emb, groups))
                ch = channels * mult
                if level in attention_levels:
                    blocks.append(AttentionBlock(ch, head_channels, groups))
            if level + 1 < len(channel_mult):
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                if side is not None:
                    side = (side + 1) // 2
        blocks += [
            ResBlock(ch, ch, emb, groups),
            AttentionBlock(ch, head_channels, groups),
            ResBlock(ch, ch, emb, groups),
        ]
        self.blocks = nn.ModuleList(blocks)
        self.out_norm = GroupNormSiLU(groups, ch)
        self.pool = AttentionPool2d(ch, side * side, head_channels) if pool == "attention" else None
        self.head = nn.Linear(ch, num_classes)
        if noise_conditioned:
            self.noise_embedding = NoiseEmbedding(embedding_channels)

    @property
    def input_layer(self) -> nn.Module:
        """The layer the latents enter first: where a lean step draws its noised input."""
        return self.input_conv

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) latents -> (B, num_classes) logits; c_noise (B,) = ln(sigma)/4, None for clean input.

        Unconditioned models ignore c_noise.
        """
        emb = None
        if self.noise_conditioned:  # SiLU once here rather than in every block (ADM's emb_layers start with SiLU)
            emb = F.silu(self.noise_embedding(resolve_c_noise(c_noise, x, self.clean_sigma)))
        h = self.input_conv(x)
        for block in self.blocks:
            args = (h, emb) if isinstance(block, ResBlock) else (h,)
            h = recompute(block, *args) if self.lean else block(*args)
        h = self.out_norm(h)
        h = self.pool(h) if self.pool is not None else h.mean((-2, -1))
        return self.head(h)

    @staticmethod
    def rename_pretrained(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our own names only: there are no public weights of this design to map from."""
        return state
