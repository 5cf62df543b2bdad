"""The training objective of one epoch: classification loss (with DRW), optionally distillation."""
from __future__ import annotations

import numpy as np
import torch

from engine.losses import Distillation, build_loss, lr_factor


class TrainingLoss:
    """Rebuilt per epoch from the epoch number alone, so a resumed run gets the same loss and learning rate."""

    def __init__(self, name: str, class_counts: np.ndarray, multilabel: bool, distill: str = "none",
                 alpha: float = 0.5, temperature: float = 4.0, drw_epoch: int = 10, device=None):
        if multilabel and not name.startswith("bce"):
            name = "bce"  # LDAM and CE are single-label losses; multi-label stores train with BCE
        self.name, self.counts, self.multilabel, self.device = name, class_counts, multilabel, device
        self.distill, self.alpha, self.temperature, self.drw_epoch = distill, alpha, temperature, drw_epoch
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        loss = build_loss(self.name, self.counts, self.multilabel, epoch=epoch, defer_epoch=self.drw_epoch,
                          device=self.device)
        if self.distill != "none":
            loss = Distillation(loss, self.alpha, self.distill, self.temperature if self.distill == "kl" else 1.0,
                                self.multilabel)
        self.loss, self.lr_factor = loss, lr_factor(self.name, epoch, self.drw_epoch)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                 teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        if self.distill != "none":
            return self.loss(logits, labels, teacher_logits, valid)
        return self.loss(logits, labels, valid)
