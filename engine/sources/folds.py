"""Cross-validation folds as the paper evaluates: 5-fold, stratified, grouped by patient.

The paper's code pools the samples, runs sklearn's StratifiedGroupKFold (shuffle,
random_state=seed) stratified on the argmax label and grouped by patient ``id`` when the
CSV has one (else StratifiedKFold), and uses fold k as test and fold k+1 as validation.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from engine.errors import UsageError


def assign_folds(labels: np.ndarray, groups: np.ndarray | None = None, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (int8) per sample; multi-label rows stratify on their argmax as the paper's do."""
    labels = np.asarray(labels)
    strata = labels.argmax(axis=1) if labels.ndim == 2 else labels
    if len(strata) < n_folds:
        raise UsageError(f"folds: {len(strata)} samples cannot fill {n_folds} folds; use fewer folds")
    if groups is not None and len(np.unique(groups)) < n_folds:
        raise UsageError(f"folds: {len(np.unique(groups))} patient groups cannot fill {n_folds} folds; use fewer folds")
    if groups is None:
        splitter, groups = StratifiedKFold(n_folds, shuffle=True, random_state=seed), None
    else:
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(strata), -1, dtype=np.int8)
    with warnings.catch_warnings():
        # A class rarer than n_folds cannot reach every fold; sklearn warns, the folds are still valid.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(strata)), strata, groups)):
            folds[test] = k
    return folds
