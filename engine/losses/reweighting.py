"""Class-balanced weights (Cui et al. 2019): what ``*-cb`` losses weigh by from the first epoch, and ``*-drw``
losses from their re-weighting epoch (``engine.losses.recipes``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.losses.ldam import check_counts


def class_balanced_weights(class_counts: Sequence[int] | torch.Tensor, beta: float = 0.9999) -> torch.Tensor:
    """w_c proportional to (1 - beta) / (1 - beta^n_c), the inverse effective number of samples; sum(w) = K."""
    if not 0 <= beta < 1:
        raise ValueError(f"class-balanced beta must lie in [0, 1) (the paper uses 0.9999), got {beta}")
    counts = check_counts(class_counts, "class-balanced weighting")
    weights = (1 - beta) / (1 - beta**counts)
    return (weights / weights.sum() * len(counts)).float()
