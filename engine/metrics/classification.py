"""Classification metrics as the paper reports them, plus MedMNIST's evaluator convention.

Single-label: accuracy, balanced accuracy (the paper's model-selection metric), Matthews correlation,
macro one-vs-rest AUROC on softmax probabilities (two classes: the AUROC of the positive-class
probability), and per-class recall. Multi-label: per-class and macro AUROC on sigmoid probabilities, and
accuracy / balanced accuracy at a 0.5 threshold averaged over classes. scikit-learn computes every number
(rank-based AUROC with ties counted as half); this module only chooses, masks and names them.
A class that never occurs (or always occurs) in y_true has no AUROC: it is skipped with a warning and
the macro mean is over the classes that have one, where sklearn and MedMNIST would raise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, matthews_corrcoef, roc_auc_score


def as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()  # bf16 has no numpy dtype
    return np.asarray(x)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * logits))  # exact form of 1 / (1 + e^-x) without overflow


def binary_aurocs(truth: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """AUROC of each column of scores (N, K) against 0/1 truth (N, K); columns without both outcomes skipped."""
    has_both = (truth.min(axis=0) == 0) & (truth.max(axis=0) == 1)
    if not has_both.all():
        skipped = [names[c] for c in np.flatnonzero(~has_both)]
        warnings.warn(f"AUROC skips classes that are all-positive or all-negative in y_true: {skipped}", stacklevel=4)
    return {names[c]: float(roc_auc_score(truth[:, c], scores[:, c])) for c in np.flatnonzero(has_both)}


def mean_or_nan(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def single_label_metrics(
    probs: np.ndarray, labels: np.ndarray, names: Sequence[str], threshold: float
) -> dict[str, float]:
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": the AUROC note already names them
        warnings.simplefilter("ignore", UserWarning)
        out = {
            "accuracy": float(accuracy_score(labels, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
            "mcc": float(matthews_corrcoef(labels, pred)),
        }
    onehot = np.eye(k, dtype=np.int64)[labels]
    if k == 2:
        out["auroc"] = binary_aurocs(onehot[:, 1:], probs[:, 1:], names[1:]).get(names[1], float("nan"))
    else:
        out["auroc"] = mean_or_nan(list(binary_aurocs(onehot, probs, names).values()))
    # MedMNIST's getACC / getAUC: binary tasks threshold the last column; multi-class ones use the argmax
    out["medmnist_acc"] = float(np.mean((probs[:, -1] > threshold) == labels)) if k == 2 else out["accuracy"]
    out["medmnist_auc"] = out["auroc"]
    present = np.bincount(labels, minlength=k)
    hits = np.bincount(labels[pred == labels], minlength=k)
    out.update({f"recall/{names[c]}": float(hits[c] / present[c]) for c in np.flatnonzero(present)})
    return out


def multilabel_metrics(
    probs: np.ndarray, labels: np.ndarray, names: Sequence[str], threshold: float
) -> dict[str, float]:
    truth = (labels > 0).astype(np.int64)
    pred = (probs > threshold).astype(np.int64)
    aurocs = binary_aurocs(truth, probs, names)
    with warnings.catch_warnings():  # one-outcome classes: balanced accuracy falls back to that outcome's recall
        warnings.simplefilter("ignore", UserWarning)
        balanced = [balanced_accuracy_score(truth[:, c], pred[:, c]) for c in range(truth.shape[1])]
    out = {
        "accuracy": float(np.mean(pred == truth)),  # = MedMNIST's ACC: per-class accuracy, averaged
        "balanced_accuracy": float(np.mean(balanced)),
        "auroc": mean_or_nan(list(aurocs.values())),
    }
    out["medmnist_acc"], out["medmnist_auc"] = out["accuracy"], out["auroc"]
    out.update({f"auroc/{name}": value for name, value in aurocs.items()})
    return out


def classification_metrics(
    scores: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    valid: np.ndarray | torch.Tensor | None = None,
    *,
    from_logits: bool = True,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Metrics of scores (N, K) against labels: (N,) class indices, or (N, K) 0/1 for a multi-label task.

    scores are logits (softmax or sigmoid applied here) unless from_logits=False says they are already
    probabilities. Rows where ``valid`` is False (loader padding) are dropped first. Per-class entries are
    keyed ``recall/<class>`` (single-label) or ``auroc/<class>`` (multi-label); NaN where undefined.
    """
    s, y = as_numpy(scores).astype(np.float64), as_numpy(labels)
    if valid is not None:
        keep = as_numpy(valid).astype(bool)
        if keep.shape != (len(s),):
            raise ValueError(f"valid must be a ({len(s)},) bool mask of the rows, got shape {keep.shape}")
        s, y = s[keep], y[keep]
    if s.ndim != 2 or s.shape[1] < 2 or len(s) == 0 or y.shape[0] != len(s):
        raise ValueError(
            f"metrics need scores (N, K) with N >= 1, K >= 2 and labels with N rows, got scores "
            f"{s.shape} and labels {y.shape}"
        )
    k = s.shape[1]
    names = [str(c) for c in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {k} score columns")
    if y.ndim == 2:
        if y.shape != s.shape:
            raise ValueError(f"multi-label labels must match the scores' shape {s.shape}, got {y.shape}")
        return multilabel_metrics(sigmoid(s) if from_logits else s, y, names, threshold)
    y = y.astype(np.int64)
    if y.ndim != 1 or y.min() < 0 or y.max() >= k:
        raise ValueError(
            f"single-label labels must be (N,) class indices in [0, {k}), got shape {y.shape}, "
            f"range [{y.min()}, {y.max()}]"
        )
    return single_label_metrics(softmax(s) if from_logits else s, y, names, threshold)
