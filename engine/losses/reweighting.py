"""Class-balanced weights (Cui et al. 2019) and the deferred re-weighting (DRW) schedule of LDAM-DRW.

DRW (Cao et al. 2019) trains unweighted first, so the features are learnt from every sample equally, and
only then re-weights the loss towards rare classes while the learning rate drops by 10x. The paper's code
switches after its (1-based) epoch 10: with epochs counted from 0 here, epochs 0-9 are plain and epoch
10 is the first re-weighted one.
"""

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


def drw_state(epoch: int, defer_epoch: int = 10, lr_factor: float = 0.1) -> tuple[bool, float]:
    """(use class weights, learning-rate factor) at 0-based ``epoch``: (False, 1.0) before defer_epoch, then
    (True, lr_factor).

    A pure function of the epoch, so a resumed run sets the same rate and loss as an uninterrupted one.
    """
    deferred = epoch >= defer_epoch
    return deferred, lr_factor if deferred else 1.0
