"""What eval.json reports of one selection (val or test): the headline metrics, the per-class block, the confusion
matrix, the calibration, and a bootstrap interval on every number, with the PNGs that draw them.

The headline metrics keep their flat keys (``balanced_accuracy``, ``auroc``, ``recall/<class>`` ...: what the
gap study and the CLI read); the rest sit beside them under ``per_class``, ``confusion_matrix``,
``calibration``, ``intervals`` (``{"balanced_accuracy": [low, high], "sensitivity/<class>": ..., "ece": ...}``:
every number engine.metrics.resampled computes, None where no resample defines it) and ``bootstrap`` (how the
intervals were made, and whether whole patients were resampled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.metrics.bootstrap import Bootstrap
from engine.metrics.calibration import calibration, plot_reliability
from engine.metrics.classification import classification_metrics
from engine.metrics.confusion import plot_confusion
from engine.metrics.per_class import per_class_metrics
from engine.metrics.predictions import Predictions
from engine.metrics.resampled import interval_numbers

DEFAULT = Bootstrap()  # 1,000 percentile resamples, seed 0, 95 %


def prediction_report(p: Predictions, groups: np.ndarray | None = None, bootstrap: Bootstrap | None = DEFAULT) -> dict:
    """The report of predictions ``p``; ``groups`` (one patient id per row) makes the bootstrap resample patients,
    ``bootstrap`` None leaves the intervals out."""
    out = {
        **classification_metrics(p.probs, p.labels, from_logits=False, class_names=p.names, threshold=p.threshold),
        "per_class": per_class_metrics(p),
        "confusion_matrix": p.confusion(),
        "calibration": calibration(p),
    }
    if bootstrap is not None:
        out["intervals"] = bootstrap.intervals(lambda ids: interval_numbers(p.take(ids)), len(p.probs), groups)
        out["bootstrap"] = bootstrap.record("patient" if groups is not None else None)
    return out


def plot_report(report: dict, out_dir: Path, role: str, title: str) -> list[Path]:
    """``<role>_confusion_matrix.png`` and ``<role>_reliability.png`` in ``out_dir``."""
    return [
        plot_confusion(report["confusion_matrix"], out_dir / f"{role}_confusion_matrix.png", title=f"{title}, {role}"),
        plot_reliability(report["calibration"], out_dir / f"{role}_reliability.png", title=f"{title}, {role}"),
    ]
