"""What every loader yields: one rank's share of one step, on the training device."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Batch:
    latents: torch.Tensor  # (B, C, h, w) float16, as stored (standardise at use)
    labels: torch.Tensor  # (B,) int64, or (B, K) uint8 multi-label
    ids: torch.Tensor  # (B,) int64 sample ids of the selection (``selection.keys[ids]`` are their keys)
    valid: torch.Tensor  # (B,) bool; False only for the padding of tail="pad_masked": loss and metrics skip it
    logvar: torch.Tensor | None = None  # posterior log-variance, when the store has it and it was asked for
    teacher_logits: torch.Tensor | None = None  # (B, K), when the store carries them

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device, non_blocking=non_blocking) for k, v in moved.items() if v is not None})
