"""What a classifier's head reads: its pooled features, caught on their way into the last Linear.

Every model class names its head (``HEAD``, a submodule path); a forward pre-hook there keeps the head's
input of the latest forward pass. Feature distillation reads the student's this way, teacher features are
stored this way, and no model's forward changes for it.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.registry import unwrapped


class PooledFeatures:
    """``.value``: the (B, D) input of ``model``'s head in its latest forward pass."""

    def __init__(self, model: nn.Module):
        model = unwrapped(model)
        self.value: torch.Tensor | None = None
        self._handle = model.get_submodule(type(model).HEAD).register_forward_pre_hook(self._catch)

    def _catch(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.value = args[0]

    def remove(self) -> None:
        self._handle.remove()
