"""Image-space ResNet-50 (the paper's image and reconstruction classifier) and ResNet-18, in plain torch.

torchvision's compiled ops do not load beside every torch build (the CPU wheels among them), so the
architecture is written out here under torchvision's parameter names (which timm's ResNets share):
``--init`` loads ImageNet weights by name. ResNet v1.5 (stride in the 3x3 conv), initialised as
torchvision does. Any in_channels works (the paper also runs ResNet-50 on latents with a fresh first
conv).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision's ResNet: 7x7/2 stem, max-pool, four stages, global average pool, fc."""

    noise_conditioned = False
    HEAD = "fc"  # the last Linear: what it reads are the pooled features (engine/models/pooled_features.py)
    PRETRAINED_NEW = ()
    PRETRAINED_REPLACEABLE = (r"^conv1\.", r"^fc\.")

    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], in_channels: int = 3, num_classes: int = 1000
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        width = 64
        for i, blocks in enumerate(layers):
            channels, stride = 64 * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or width != channels * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(width, channels * block.expansion, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(channels * block.expansion),
                )
            stage = [block(width, channels, stride, downsample)]
            width = channels * block.expansion
            stage += [block(width, channels, 1, None) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits; c_noise is accepted for a uniform call and ignored."""
        x = self.maxpool(self.image_stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def image_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def features(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        """The feature map the network first computes at ``stride`` (a grafted latent stem's target)."""
        for stage in STAGES[: stage_index(stride) + 1]:
            x = getattr(self, stage.name)(x)
        return x

    @staticmethod
    def rename_pretrained(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision and timm ResNets share these names."""
        return state


class Stage(NamedTuple):
    """One step of the network: its method or module name, output stride, and output channels (times the
    block's expansion where ``expands``)."""

    name: str
    stride: int
    channels: int
    expands: bool = False

    def width(self, block: type[BasicBlock | Bottleneck]) -> int:
        return self.channels * (block.expansion if self.expands else 1)


STAGES = (
    Stage("image_stem", 2, 64),
    Stage("maxpool", 4, 64),
    *(Stage(f"layer{i + 1}", 4 * 2**i, 64 * 2**i, expands=True) for i in range(4)),
)


def stage_index(stride: int) -> int:
    """The first stage of STAGES whose output has ``stride``: where a network of that input stride joins."""
    for i, stage in enumerate(STAGES):
        if stage.stride == stride:
            return i
    raise ValueError(f"a ResNet has feature maps of strides {sorted({s.stride for s in STAGES})}, not {stride}")


RESNETS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}
