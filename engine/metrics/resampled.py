"""The numbers eval.json gives bootstrap intervals, computed fast enough to repeat on 1,000 resamples.

scikit-learn validates its inputs on every call (milliseconds each), so its per-class loop costs a minute per
1,000 resamples. Here torchmetrics' functional metrics (input checks off) compute the same numbers from the
indicator matrices of ``Predictions``, in one call each for all classes: ``multilabel_stat_scores`` (each
class's TP, FP, TN, FN), ``multilabel_auroc`` and ``multilabel_average_precision`` (one-vs-rest per class),
``multiclass_matthews_corrcoef``, and the calibration module's ECE. On the original sample they equal the
scikit-learn numbers of the report (tests/test_metrics_report.py checks it).

Covered: accuracy, balanced accuracy, MCC (single-label), macro AUROC, ECE, and per class sensitivity,
specificity, PPV, F1, AUROC and AUPRC (keys '<metric>/<class>'). ``recall/<class>``, ``medmnist_acc`` and
``medmnist_auc`` repeat sensitivity, accuracy (a binary task's medmnist_acc thresholds at 0.5 instead) and AUROC.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_matthews_corrcoef,
    multilabel_auroc,
    multilabel_average_precision,
    multilabel_stat_scores,
)

from engine.metrics.calibration import expected_calibration_error
from engine.metrics.per_class import PER_CLASS
from engine.metrics.predictions import MultiLabelPredictions, Predictions


def nan_mean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def interval_numbers(p: Predictions) -> dict[str, float | None]:
    """Headline, per-class and calibration numbers of predictions ``p`` (None where undefined)."""
    k, n = len(p.names), len(p.probs)
    truth, predicted, probs = (torch.from_numpy(np.ascontiguousarray(a)) for a in (p.truth, p.predicted, p.probs))
    tp, fp, tn, fn, support = (
        multilabel_stat_scores(predicted, truth, num_labels=k, average=None, validate_args=False).double().numpy().T
    )
    ranked = (support > 0) & (support < n)
    auroc = multilabel_auroc(probs, truth, num_labels=k, average=None, validate_args=False).double().numpy()
    auprc = multilabel_average_precision(probs, truth, num_labels=k, average=None, validate_args=False)
    per_class = {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "auroc": np.where(ranked, auroc, np.nan),
        "auprc": np.where(ranked, auprc.double().numpy(), np.nan),
    }
    if isinstance(p, MultiLabelPredictions):
        # scikit-learn's balanced accuracy of a one-outcome label is the recall of the outcome it has
        balanced = [nan_mean(np.array([s, q])) for s, q in zip(per_class["sensitivity"], per_class["specificity"])]
        out = {"accuracy": float((tp + tn).sum() / (n * k)), "balanced_accuracy": float(np.mean(balanced))}
    else:
        out = {
            "accuracy": float(tp.sum() / n),
            "balanced_accuracy": nan_mean(per_class["sensitivity"]),
            "mcc": float(
                multiclass_matthews_corrcoef(
                    torch.from_numpy(p.probs.argmax(axis=1)), torch.from_numpy(p.labels), k, validate_args=False
                )
            ),
        }
    out["auroc"] = float(per_class["auroc"][1]) if k == 2 and not p.multilabel else nan_mean(per_class["auroc"])
    out["ece"] = expected_calibration_error(p)
    for metric in PER_CLASS:
        out.update({f"{metric}/{name}": float(v) for name, v in zip(p.names, per_class[metric])})
    return {key: None if v != v else v for key, v in out.items()}  # NaN -> None
