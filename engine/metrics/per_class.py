"""Per-class (one-vs-rest) metrics: sensitivity, specificity, PPV, F1, AUROC, AUPRC and support.

A macro mean hides the rare class, which is the class generative augmentation is for; reporting guidelines
(Metrics Reloaded, CLAIM) ask for each class's numbers. Every number is scikit-learn's, on the 0/1 indicator
matrices of ``Predictions`` (one column per class, or per label of a multi-label task):
``multilabel_confusion_matrix`` gives each class's TN/FP/FN/TP (specificity = TN / (TN + FP)),
``precision_recall_fscore_support`` sensitivity (recall), PPV (precision) and F1, ``roc_auc_score`` and
``average_precision_score`` (AUPRC, step-wise as scikit-learn defines it) the one-vs-rest ranking of each
class's probability. A number that is undefined on these samples (no positives, nothing predicted positive,
one outcome only) is None.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from engine.metrics.predictions import Predictions

PER_CLASS = ("sensitivity", "specificity", "ppv", "f1", "auroc", "auprc")  # "support" is a count, no interval


def defined(value: float) -> float | None:
    """The value, None where it is NaN (JSON has no NaN, and None == None where NaN != NaN)."""
    return None if math.isnan(value) else float(value)


def per_class_metrics(p: Predictions) -> dict[str, dict[str, float | int | None]]:
    """{class: {sensitivity, specificity, ppv, f1, auroc, auprc, support}} of predictions ``p``."""
    truth, predicted, k = p.truth, p.predicted, len(p.names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        ppv, sensitivity, f1, support = precision_recall_fscore_support(
            truth, predicted, average=None, labels=list(range(k)), zero_division=np.nan
        )
    tn_fp = multilabel_confusion_matrix(truth, predicted)[:, 0, :]  # row "actually negative": TN, FP
    negatives = tn_fp.sum(axis=1)
    has_both = (truth.min(axis=0) == 0) & (truth.max(axis=0) == 1)
    out = {}
    for c, name in enumerate(p.names):
        ranked = bool(has_both[c])
        out[name] = {
            "sensitivity": defined(sensitivity[c]),
            "specificity": defined(tn_fp[c, 0] / negatives[c]) if negatives[c] else None,
            "ppv": defined(ppv[c]),
            "f1": defined(f1[c]),
            "auroc": float(roc_auc_score(truth[:, c], p.probs[:, c])) if ranked else None,
            "auprc": float(average_precision_score(truth[:, c], p.probs[:, c])) if ranked else None,
            "support": int(support[c]),
        }
    return out
