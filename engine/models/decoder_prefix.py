"""The first k blocks of an autoencoder's own decoder, frozen: a fixed stem that takes latents part of the way
back to pixels.

It is a diagnostic (`engine gap`'s decoder-k arms): the reconstruction arm learns from D(z) about as well as the
image arm does, the latent arm from z much worse. A classifier trained on the features after k of the decoder's
blocks says where along the decoder that learnability appears, from a map as small as the latent's to one as
large as the image's. Not a way to train cheaply: it decodes (part of) every batch at every step.

Blocks, counted as the decoder runs them: the mid block (at the latent's size) is block 1, then each up block
(each doubling the size but the last); ``post_quant_conv`` and ``conv_in`` always run. The features are handed on
as the decoder's next layer reads them: through the GroupNorm that opens its next block (after the last block,
its output norm), since a block's output is a residual stream whose scale grows with depth and which the
decoder itself never reads unnormalised. Only diffusers decoders of that shape (AutoencoderKL: SD, SDXL, FLUX,
the default, MedVAE) have it.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.errors import UsageError


def decoder_stages(autoencoder: nn.Module) -> list[nn.Module]:
    """The decoder's blocks in the order it runs them: its mid block, then its up blocks."""
    decoder = getattr(autoencoder, "decoder", None)
    if decoder is None or not hasattr(decoder, "mid_block") or not hasattr(decoder, "up_blocks"):
        raise UsageError(
            f"{type(autoencoder).__name__}: no decoder of mid and up blocks (diffusers' AutoencoderKL) to take a "
            "prefix of; the decoder-k arms need such an autoencoder"
        )
    return [decoder.mid_block, *decoder.up_blocks]


class DecoderPrefix(nn.Module):
    """z (as the store keeps it) -> the decoder's features after its first ``blocks`` blocks, without gradients.

    Its parameters are the autoencoder's own and stay frozen: ``train()`` leaves it in eval mode, so a run's
    ``net.train()`` never switches a dropout or norm of the decoder into training behaviour.
    """

    def __init__(self, autoencoder: nn.Module, blocks: int):
        super().__init__()
        stages = decoder_stages(autoencoder)
        if not 1 <= blocks <= len(stages):
            raise UsageError(
                f"decoder-{blocks}: this decoder has {len(stages)} blocks (a mid block and "
                f"{len(stages) - 1} up blocks); pick k in 1..{len(stages)}"
            )
        self.blocks = blocks
        self.post_quant_conv = getattr(autoencoder, "post_quant_conv", None) or nn.Identity()
        self.conv_in = autoencoder.decoder.conv_in
        self.stages = nn.ModuleList(stages[:blocks])
        self.norm = stages[blocks].resnets[0].norm1 if blocks < len(stages) else autoencoder.decoder.conv_norm_out
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> DecoderPrefix:
        return self  # frozen: always as the autoencoder decodes

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant_conv(z.float()))
        for stage in self.stages:
            h = stage(h)  # diffusers' mid and up decoder blocks take (hidden_states, temb=None)
        return self.norm(h)
