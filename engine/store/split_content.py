"""What a split holds before any latent is computed: keys, labels, folds and patient groups."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SplitContent:
    keys: np.ndarray  # (N,) str, unique within the split
    labels: np.ndarray  # (N,) int64 or (N, K) uint8 multi-label
    folds: np.ndarray  # (N,) int8 cross-validation fold, -1 when folds were not assigned
    groups: np.ndarray  # (N,) str patient id ("" when the source has none)

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name in ("labels", "folds", "groups"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"split content: {name} has {len(getattr(self, name))} rows, keys {n}")
        if len(set(self.keys.tolist())) != n:
            raise ValueError("split content: sample keys are not unique")
