"""LDAM: label-distribution-aware margins (Cao et al. 2019), as the paper's code (LongTailCXR lineage) uses it.

A rare class gets a larger margin: the true-class logit has m_c subtracted before a scaled softmax, with
m_c proportional to n_c^(-1/4) and the largest margin 0.5; logits are scaled by s = 30, since the margin
is meant for normalised, cosine-like logits in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UsageError
from engine.losses.cross_entropy import check_single_label
from engine.losses.masked import masked_mean


def check_counts(
    class_counts: Sequence[int] | torch.Tensor | None, what: str, class_names: Sequence[str] | None = None
) -> torch.Tensor:
    """Training-selection samples per class as float64; every class must occur (margins and weights need n_c > 0).

    A class without a training sample is the user's data, not a bug: a ``UsageError`` naming the class (by
    name when ``class_names`` are given) and the ways out, raised when the loss is built, before any step.
    """
    counts = torch.as_tensor([] if class_counts is None else class_counts, dtype=torch.float64)
    if counts.ndim != 1 or len(counts) < 2:
        raise ValueError(
            f"{what} needs class_counts, one count per class of the training selection, got {counts.tolist()}"
        )
    empty = torch.nonzero(counts <= 0).flatten().tolist()
    if empty:
        named = ", ".join(repr(class_names[c]) if class_names is not None else f"index {c}" for c in empty)
        which, it = (f"class {named} has", "it") if len(empty) == 1 else (f"classes {named} have", "them")
        raise UsageError(
            f"{which} no training sample (training counts {counts.long().tolist()}) and {what} needs every "
            f"class: merge {it} into another class, drop {it} (rows or CSV column) and re-encode, train with "
            f"--fold k so the pooled folds give {it} training samples, or use --loss ce"
        )
    return counts


def ldam_margins(class_counts: Sequence[int] | torch.Tensor, max_margin: float = 0.5) -> torch.Tensor:
    """m_c = C / n_c^(1/4) with C chosen so that max_c m_c = max_margin (the rarest class)."""
    margins = check_counts(class_counts, "LDAM").pow(-0.25)
    return (margins * (max_margin / margins.max())).float()


class LDAMLoss(nn.Module):
    """Cross-entropy of s * (z - m_y e_y), optionally class-weighted (DRW), over the valid rows."""

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        max_margin: float = 0.5,
        scale: float = 30.0,
        weight: torch.Tensor | None = None,
    ):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"LDAM scale must be positive (the paper uses 30), got {scale}")
        self.scale = scale
        self.register_buffer("margins", ldam_margins(class_counts, max_margin))
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        check_single_label(logits, labels)
        if logits.shape[1] != len(self.margins):
            raise ValueError(
                f"LDAM was built for {len(self.margins)} classes (class_counts), the logits have {logits.shape[1]}"
            )
        shifted = logits.float().scatter_add(1, labels[:, None], -self.margins[labels][:, None])
        per_row = F.cross_entropy(self.scale * shifted, labels, reduction="none")
        return masked_mean(per_row, valid, None if self.weight is None else self.weight[labels])
