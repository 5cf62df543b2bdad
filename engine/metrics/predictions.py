"""A classifier's predictions on one selection, as the per-class, confusion and calibration metrics read them.

Single-label and multi-label tasks differ in three things only: how scores become probabilities (softmax or
sigmoid), what counts as a predicted positive (the argmax, or a probability above the threshold), and what a
confidence is (the top-label probability against "the top label is right", or each label's probability
against "the label is present"). Each task is one class here; everything downstream reads the 0/1 indicator
matrices (N, K) they build, so one-vs-rest per-class numbers are the same code for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix

from engine.metrics.classification import as_numpy, sigmoid, softmax

OUTCOMES = ("TN", "FP", "FN", "TP")  # a multi-label confusion matrix's columns


@dataclass(frozen=True, eq=False)
class Predictions:
    probs: np.ndarray  # (N, K) probabilities
    labels: np.ndarray  # (N,) class indices, or (N, K) 0/1
    names: tuple[str, ...]
    threshold: float = 0.5

    multilabel = False

    def take(self, ids: np.ndarray) -> Predictions:
        """The predictions of rows ``ids`` (a bootstrap resample repeats rows)."""
        return type(self)(self.probs[ids], self.labels[ids], self.names, self.threshold)

    @cached_property
    def truth(self) -> np.ndarray:
        """(N, K) 0/1: which classes each sample has."""
        raise NotImplementedError

    @cached_property
    def predicted(self) -> np.ndarray:
        """(N, K) 0/1: which classes each sample is predicted to have."""
        raise NotImplementedError

    def confidence(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat confidences and whether each came true (0/1), the pairs calibration bins."""
        raise NotImplementedError

    def confusion(self) -> dict:
        """{"rows", "columns", "counts", "axes" (what rows and columns are)}: scikit-learn's confusion matrix."""
        raise NotImplementedError


class SingleLabelPredictions(Predictions):
    @cached_property
    def truth(self) -> np.ndarray:
        return np.eye(len(self.names), dtype=np.int64)[self.labels]

    @cached_property
    def predicted(self) -> np.ndarray:
        return np.eye(len(self.names), dtype=np.int64)[self.probs.argmax(axis=1)]

    def confidence(self) -> tuple[np.ndarray, np.ndarray]:
        """Top-label: the highest probability, and whether its class is the label."""
        return self.probs.max(axis=1), (self.probs.argmax(axis=1) == self.labels).astype(np.int64)

    def confusion(self) -> dict:
        """(K, K): rows the true class, columns the predicted one, every class listed even when absent."""
        counts = confusion_matrix(self.labels, self.probs.argmax(axis=1), labels=list(range(len(self.names))))
        names = list(self.names)
        return {"rows": names, "columns": names, "counts": counts.tolist(), "axes": ["true class", "predicted class"]}


class MultiLabelPredictions(Predictions):
    multilabel = True

    @cached_property
    def truth(self) -> np.ndarray:
        return (self.labels > 0).astype(np.int64)

    @cached_property
    def predicted(self) -> np.ndarray:
        return (self.probs > self.threshold).astype(np.int64)

    def confidence(self) -> tuple[np.ndarray, np.ndarray]:
        """Every label's probability against whether the label is present (K binary predictions per sample)."""
        return self.probs.ravel(), self.truth.ravel()

    def confusion(self) -> dict:
        """(K, 4): each label's TN, FP, FN, TP at the threshold."""
        counts = multilabel_confusion_matrix(self.truth, self.predicted).reshape(len(self.names), 4)
        return {
            "rows": list(self.names),
            "columns": list(OUTCOMES),
            "counts": counts.tolist(),
            "axes": ["label", f"outcome at threshold {self.threshold:g}"],
        }


def predictions_of(
    logits: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    threshold: float = 0.5,
) -> Predictions:
    """Predictions from logits (N, K) and labels: (N,) class indices, or (N, K) 0/1 for a multi-label task."""
    s, y = as_numpy(logits).astype(np.float64), as_numpy(labels)
    names = tuple(str(c) for c in class_names)
    if s.ndim != 2 or s.shape[1] != len(names) or y.shape[0] != len(s):
        raise ValueError(f"predictions need logits (N, {len(names)}) and N labels, got {s.shape} and {y.shape}")
    if y.ndim == 2:
        return MultiLabelPredictions(sigmoid(s), y, names, threshold)
    return SingleLabelPredictions(softmax(s), y.astype(np.int64), names, threshold)
