"""The image classifier on latents: the image arm's own ResNet with everything up to its stride-f feature map
replaced by a latent stem, so that the image and latent arms of a gap study differ only in their input.

An autoencoder of factor f hands the classifier a grid of one latent cell per f x f pixels; the ResNet, fed the
image, first computes a map at that stride after its stem (f = 2), max-pool (4), layer2 (8) or layer3 (16). The
latent stem (two 3x3 conv-BN-ReLU, at the latent's own resolution) computes a map of the same shape and the rest
of the ResNet runs unchanged: the same stages, pool and head under the same parameter names, so an image
checkpoint (`--init`, or a graft: engine/training/graft.py) loads into them, and ``ResNet.features`` of the
image network at the same stride is what a grafted stem regresses.

``feature_stride`` is pixels of the image classifier's input per latent cell: with the paper's 512 px encodes
and 256 px image classifiers, an f = 8 autoencoder gives 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.models.resnet import STAGES, BasicBlock, Bottleneck, ResNet, stage_index


class LatentStemResNet(ResNet):
    """ResNet-18/50 whose image stem (and any stage above the latent's stride) is a latent stem."""

    PRETRAINED_NEW = (r"^stem\.",)  # an image checkpoint has no latent stem
    PRETRAINED_REPLACEABLE = (r"^fc\.",)  # the head, for another class count

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        in_channels: int,
        num_classes: int = 1000,
        feature_stride: int = 4,
    ):
        super().__init__(block, layers, in_channels=3, num_classes=num_classes)
        cut = stage_index(feature_stride)
        self.feature_stride = feature_stride
        self.replaced = [stage.name for stage in STAGES[: cut + 1]]
        self.kept = [stage.name for stage in STAGES[cut + 1 :]]
        for name in ("conv1", "bn1", *self.replaced):
            if isinstance(getattr(self, name, None), nn.Module):
                delattr(self, name)
        width = STAGES[cut].width(block)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        for m in self.stem.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, num_classes) logits; c_noise is accepted for a uniform call and ignored."""
        x = self.stem(x)
        for name in self.kept:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def rename_pretrained(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An image checkpoint without the stages the latent stem replaces (its image stem among them)."""
        gone = tuple(f"{name}." for name in ("conv1", "bn1", *self.replaced))
        return {k: v for k, v in state.items() if not k.startswith(gone)}
