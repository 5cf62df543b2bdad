"""Cross-entropy for single-label stores and BCE-with-logits for multi-label ones, both mask-aware.

Logits are cast to fp32 first: under bf16 autocast the log-sum-exp of 30x-scaled LDAM logits or of many
classes loses the digits that separate a good step from a bad one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.losses.masked import masked_mean


def check_single_label(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or labels.dtype != torch.int64:
        raise ValueError(
            f"single-label losses take logits (B, K) and int64 labels (B,), got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)} {labels.dtype}; "
            f"multi-label stores (labels (N, K)) take loss 'bce'"
        )


class CrossEntropy(nn.Module):
    """Softmax cross-entropy, optionally class-weighted (torch's weighted mean), over the valid rows."""

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        check_single_label(logits, labels)
        per_row = F.cross_entropy(logits.float(), labels, reduction="none")
        return masked_mean(per_row, valid, None if self.weight is None else self.weight[labels])


class BinaryCrossEntropy(nn.Module):
    """Per-class sigmoid BCE for multi-label 0/1 targets (B, K), mean over classes and valid rows.

    pos_weight (K,) scales the positive term of each class, as in ``BCEWithLogitsLoss``: n_neg / n_pos
    balances a rare finding against its many negatives.
    """

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        pos_weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if logits.ndim != 2 or labels.shape != logits.shape:
            raise ValueError(
                f"loss 'bce' takes logits and 0/1 labels of the same shape (B, K), got logits "
                f"{tuple(logits.shape)} and labels {tuple(labels.shape)}; "
                f"single-label stores take 'ce' or 'ldam'"
            )
        per_element = F.binary_cross_entropy_with_logits(
            logits.float(), labels.float(), pos_weight=self.pos_weight, reduction="none"
        )
        return masked_mean(per_element, valid)
