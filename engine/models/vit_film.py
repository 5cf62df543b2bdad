"""A DiT-style transformer on patchified latents, noise-conditioned through adaLN-Zero.

The latent (B, C, H, W) is cut into p x p patches (a strided convolution, as DiT's PatchEmbed), with fixed
2-D sin-cos positions centred over the grid (so they add nothing to the mean-pooled token the head reads);
each block is pre-norm attention and MLP. With noise conditioning, every block's
LayerNorms are modulated by the same EDM2 embedding of c_noise = ln(sigma)/4 the other latent models use:
``modulate(LayerNorm(x)) = LayerNorm(x) * (1 + scale) + shift`` (FiLM on a LayerNorm, fused in
``kernels.adaln_modulate``), and the residual branches are gated, DiT's adaLN-Zero: the projections start
at zero, so every block starts as the identity. Without it, the blocks are plain pre-norm ViT blocks with
affine LayerNorms. A mean over tokens, a (modulated) LayerNorm and a linear layer give the logits.

Attention runs on ``torch.nn.functional.scaled_dot_product_attention`` (``attention="sdpa"``), or on
xformers' ``memory_efficient_attention`` (``attention="xformers"``) where xformers imports and the input
is on CUDA; anything else is a one-line error saying why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UsageError
from engine.models.memory import is_lean, recompute
from engine.models.noise_embedding import NoiseEmbedding, resolve_c_noise
from kernels import adaln_modulate
from kernels.fused_mlp import fused_mlp

VIT_PRESETS = {  # DiT's widths: S 384 / 6 heads, B 768 / 12; T (192 / 3) for small budgets; depth 12
    "vit-t": {"dim": 192, "depth": 12, "heads": 3},
    "vit-s": {"dim": 384, "depth": 12, "heads": 6},
    "vit-b": {"dim": 768, "depth": 12, "heads": 12},
}
ATTENTION = ("sdpa", "xformers")
PATCH_SIZE = 4  # a 64x64 latent (FLUX.2 of 512 px images) gives 16x16 = 256 tokens


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """(grid*grid, dim) fixed 2-D sin-cos embedding (MAE's and DiT's): half the channels per axis."""
    if dim % 4:
        raise UsageError(f"vit: dim {dim} must be a multiple of 4 for 2-D sin-cos positions")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    coords = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    parts = [f(axis.reshape(-1, 1) * omega) for axis in (yy, xx) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).float()


def centred_positions(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """(1, grid_h * grid_w, dim) sin-cos positions of a grid_h x grid_w token grid, centred over the grid.

    Centred because the raw table's token mean is nearly as long as each position (13.4 of 13.9 at 4x4
    tokens, dim 384): uncentred, the mean-pooled token was one constant for every input and the head's
    argmax a single class for hundreds of steps (balanced accuracy 0.25 while AUROC rose).
    """
    side = max(grid_h, grid_w)
    pos = sincos_positions(side, dim).view(side, side, dim)[:grid_h, :grid_w].reshape(1, -1, dim)
    return pos - pos.mean(dim=1, keepdim=True)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """(B, heads, T, d) attention with the chosen backend."""
    if backend == "xformers":
        import xformers.ops as xops  # checked at construction: importable, and the input is on CUDA

        if not q.is_cuda:
            raise UsageError("--attention xformers runs on CUDA only; this input is on the CPU: use --attention sdpa")
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def check_attention(backend: str) -> None:
    """Refuse a backend that cannot run here, with the reason, before any training starts."""
    if backend not in ATTENTION:
        raise UsageError(f"--attention {backend!r}: expected one of {', '.join(ATTENTION)}")
    if backend == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except Exception as err:  # noqa: BLE001 - its compiled part fails to load in many ways, all "not here"
            raise UsageError(
                f"--attention xformers: xformers does not load here ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:160]}); install the xformers build of this torch and "
                "CUDA, or use --attention sdpa"
            ) from None
        if not torch.cuda.is_available():
            raise UsageError(
                "--attention xformers runs on CUDA only and no CUDA device is visible; use --attention sdpa"
            )


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, backend: str):
        super().__init__()
        if dim % heads:
            raise UsageError(f"vit: dim {dim} is not divisible by {heads} heads")
        self.heads, self.backend = heads, backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(attend(q, k, v, self.backend).transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-norm attention + MLP; with ``conditioned``, adaLN-Zero modulation and gates from the embedding.

    lean: the MLP runs as ``kernels.fused_mlp`` (same parameters), so the block's rerun in the backward keeps
    only the MLP's input instead of its two 4x-wide intermediates.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        conditioned: bool,
        embedding: int,
        backend: str,
        lean: bool = False,
    ):
        super().__init__()
        self.conditioned, self.lean = conditioned, lean
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=not conditioned, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=not conditioned, eps=1e-6)
        self.attn = Attention(dim, heads, backend)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        if conditioned:  # shift, scale, gate for attention and for the MLP (zeroed by ViTFiLM: identity blocks)
            self.ada = nn.Linear(embedding, 6 * dim)

    def forward(self, x: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        if not self.conditioned:
            x = x + self.attn(self.norm1(x))
            return x + self._mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(e).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(adaln_modulate(x, scale1, shift1, self.norm1.eps))
        return x + gate2[:, None] * self._mlp(adaln_modulate(x, scale2, shift2, self.norm2.eps))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if not self.lean:
            return self.mlp(x)
        fc1, gelu, fc2 = self.mlp
        return fused_mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, approximate=gelu.approximate)


class ViTFiLM(nn.Module):
    """Patchified-latent transformer; with noise_conditioned, forward(x, c_noise) modulates every block.

    memory: "plain" or "lean" (``engine.models.memory``): lean recomputes every block in the backward from its
    input token stream, with the MLP fused.
    """

    HEAD = "head"  # the last Linear: what it reads are the pooled features (engine/models/pooled_features.py)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        noise_conditioned: bool = True,
        dim: int = 384,
        depth: int = 12,
        heads: int = 6,
        patch_size: int = PATCH_SIZE,
        mlp_ratio: float = 4.0,
        embedding_channels: int = 256,
        attention: str = "sdpa",
        clean_sigma: float = 0.002,
        latent_size: int | None = None,
        memory: str = "plain",
    ):
        super().__init__()
        check_attention(attention)
        self.lean = is_lean(memory, "vit")
        self.noise_conditioned, self.patch_size, self.clean_sigma = noise_conditioned, patch_size, clean_sigma
        self.patchify = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, noise_conditioned, embedding_channels, attention, self.lean)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, elementwise_affine=not noise_conditioned, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        if noise_conditioned:
            self.noise_embedding = NoiseEmbedding(embedding_channels)
            self.final = nn.Linear(embedding_channels, 2 * dim)  # shift and scale of the final norm
        for m in self.modules():  # DiT's init: Xavier-uniform linear layers and patch projection, zero biases
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
        for m in (self.final, *(b.ada for b in self.blocks)) if noise_conditioned else ():
            nn.init.zeros_(m.weight)  # adaLN-Zero: identity blocks and an unmodulated final norm at start
            nn.init.zeros_(m.bias)
        # A small random head, not DiT's zero one: with zero gates the blocks learn only through the head, and
        # the mean of identity-block tokens is a linear probe of the latent (near chance on the default store),
        # so a zero head left vit-s-film at chance for 18 epochs there.
        nn.init.normal_(self.head.weight, std=0.02)
        # the positions of the square grid of latent_size, built once and moved with the model (not saved:
        # they follow from the shape); an input of another size computes its own in forward
        grid = latent_size // patch_size if latent_size and latent_size % patch_size == 0 else None
        self.register_buffer("positions", centred_positions(grid, grid, dim) if grid else None, persistent=False)

    @property
    def input_layer(self) -> nn.Module:
        """The layer the latents enter first, the patch embedding: where a lean step draws its noised input."""
        return self.patchify

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) latents -> (B, num_classes) logits; c_noise (B,) = ln(sigma)/4, None for clean input."""
        if x.dim() != 4 or x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise UsageError(
                f"vit: input {tuple(x.shape)} must be (B, C, H, W) with H and W multiples of the patch "
                f"size {self.patch_size}; build it with patch_size dividing the latent side"
            )
        grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        h = self.patchify(x).flatten(2).transpose(1, 2)  # (B, T, dim)
        # the residual stream in at least fp32: under autocast the patch projection gives bf16, and a bf16
        # stream would round every block's residual sum (DiT's fp32 pos_embed promotes it the same way)
        stream, pos = torch.promote_types(h.dtype, torch.float32), self.positions
        if pos is None or grid_h != grid_w or pos.shape[1] != grid_h * grid_w:
            pos = centred_positions(grid_h, grid_w, h.shape[-1]).to(h.device)
        h = h + pos.to(stream)
        e = (
            F.silu(self.noise_embedding(resolve_c_noise(c_noise, x, self.clean_sigma)))
            if self.noise_conditioned
            else None
        )
        for block in self.blocks:
            h = recompute(block, h, e) if self.lean else block(h, e)
        pooled = h.mean(dim=1, keepdim=True)  # (B, 1, dim): the average token
        if self.noise_conditioned:
            shift, scale = self.final(e).chunk(2, dim=1)
            pooled = adaln_modulate(pooled, scale, shift, self.norm.eps)
        else:
            pooled = self.norm(pooled)
        return self.head(pooled[:, 0])
