"""Expected calibration error and its reliability diagram.

Definition: the top-label ECE with 15 equal-width bins over [0, 1] (Guo et al. 2017, "On Calibration of Modern
Neural Networks"): each sample's confidence is its highest class probability and its outcome whether that class
is the label; ECE = sum over bins of (share of samples in the bin) x |accuracy in the bin - mean confidence in the
bin|. For a multi-label task each label is its own binary prediction (confidence = the label's probability,
outcome = the label is present) and the K x N pairs are binned together. torchmetrics' ``binary_calibration_error``
(L1 norm) computes the number; 0 is perfectly calibrated, an overconfident model scores high.

The reliability diagram draws each bin's accuracy against its mean confidence, with the diagonal a calibrated
model would follow and the share of samples per bin beneath it. Its bins are torchmetrics' (left-closed), except
that a confidence of exactly 1 is drawn in the last bin where torchmetrics keeps a bin of its own for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchmetrics.functional.classification import binary_calibration_error

from engine.metrics.figure_file import save_png
from engine.metrics.predictions import Predictions

BINS = 15
DEFINITION = f"top-label ECE, {BINS} equal-width bins, L1 (torchmetrics binary_calibration_error)"


def expected_calibration_error(p: Predictions, bins: int = BINS) -> float:
    """ECE of predictions ``p`` (top-label; per label pooled for a multi-label task)."""
    confidence, hit = p.confidence()
    return float(
        binary_calibration_error(
            torch.from_numpy(confidence), torch.from_numpy(hit), n_bins=bins, norm="l1", validate_args=False
        )
    )


def reliability_bins(p: Predictions, bins: int = BINS) -> dict:
    """Per bin: its edges, the number of samples, their mean confidence and accuracy (None for an empty bin)."""
    confidence, hit = p.confidence()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum, hit_sum = (np.bincount(which, weights=w, minlength=bins) for w in (confidence, hit))
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": [float(c / n) if n else None for c, n in zip(conf_sum, count)],
        "accuracy": [float(h / n) if n else None for h, n in zip(hit_sum, count)],
    }


def calibration(p: Predictions, bins: int = BINS) -> dict:
    """eval.json's calibration block: the ECE, its definition and the diagram's bins."""
    return {"ece": expected_calibration_error(p, bins), "definition": DEFINITION, "bins": reliability_bins(p, bins)}


def plot_reliability(block: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """PNG of a ``calibration`` block: accuracy against confidence per bin, the diagonal, and the bins' counts."""
    b = block["bins"]
    edges, count = np.asarray(b["edges"]), np.asarray(b["count"])
    filled = count > 0
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    accuracy = np.array([a if a is not None else 0.0 for a in b["accuracy"]])
    confidence = np.array([c if c is not None else 0.0 for c in b["confidence"]])
    fig = Figure(figsize=(4.2, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(
        centres[filled],
        accuracy[filled],
        width[filled],
        color="tab:blue",
        edgecolor="black",
        lw=0.5,
        label="accuracy in bin",
    )
    top.bar(
        centres[filled],
        (confidence - accuracy)[filled],
        width[filled],
        bottom=accuracy[filled],
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        lw=0.5,
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(fontsize=7, loc="upper left")
    top.set_title(f"{title + ': ' if title else ''}ECE {block['ece']:.3f}", fontsize=9)
    bottom.bar(centres, count, width, color="grey", edgecolor="black", lw=0.5)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("samples")
    fig.tight_layout()
    return save_png(fig, path)
