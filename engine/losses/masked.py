"""The one reduction every loss shares: a mean over the valid rows of a batch.

Loaders with tail="pad_masked" pad the last global batch with repeats marked invalid, so every rank takes
the same number of steps; those rows must add nothing to the loss or its gradient. Masking with
``torch.where`` (not boolean indexing) keeps the step free of host syncs and of data-dependent shapes.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, valid: torch.Tensor | None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """sum(w * v) / sum(w) over rows where valid; v is per row, (B,) or (B, ...) averaged over the rest.

    With weights this is torch's weighted cross-entropy mean (normalised by the weights of the rows
    counted), so an all-valid batch gives exactly ``F.cross_entropy(..., weight=w)``. A batch with no
    valid row gives 0 with zero gradients, never NaN: a rank holding only padding still steps with DDP.
    """
    rows = values.flatten(1).mean(1) if values.ndim > 1 else values
    w = torch.ones_like(rows) if weight is None else weight.to(rows.dtype)
    if valid is not None:
        if valid.dtype != torch.bool or tuple(valid.shape) != tuple(rows.shape):
            raise ValueError(
                f"valid must be a ({rows.shape[0]},) bool mask of the batch rows (Batch.valid), "
                f"got {tuple(valid.shape)} {valid.dtype}"
            )
        w = torch.where(valid, w, torch.zeros_like(w))
        rows = torch.where(valid, rows, torch.zeros_like(rows))
    return (w * rows).sum() / w.sum().clamp_min(torch.finfo(rows.dtype).tiny)
