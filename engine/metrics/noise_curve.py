"""The diagnostic curve: metrics against noise level sigma, as a Markdown table and a PNG.

How fast accuracy falls with sigma says how much class information the latent space keeps at each
noise level a sampler visits. The plot uses matplotlib's Agg canvas directly (no pyplot), so it runs
headless and leaves the process-wide backend alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.metrics.figure_file import save_png

DEFAULT_METRICS = ("balanced_accuracy", "auroc", "mcc")

Curve = Mapping[float | str, Mapping[str, float]]  # sigma -> metrics; str keys as JSON gives them back


def sorted_points(curve: Curve) -> list[tuple[float, Mapping[str, float]]]:
    points = sorted((float(sigma), metrics) for sigma, metrics in curve.items())
    if not points or points[0][0] <= 0:
        raise ValueError(
            f"a noise curve needs metrics at one or more positive sigmas, got sigmas {[p[0] for p in points]}"
        )
    return points


def shown(points: list[tuple[float, Mapping[str, float]]], metrics: Sequence[str]) -> list[str]:
    """The asked metrics that some level has (a multi-label curve has no 'mcc')."""
    names = [m for m in metrics if any(m in values for _, values in points)]
    if not names:
        raise ValueError(f"none of the metrics {list(metrics)} is in the curve; it has {sorted(points[0][1])}")
    return names


def cell(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def noise_curve_table(curve: Curve, metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """Markdown table, one row per sigma (ascending), one column per metric; '-' where a value is missing."""
    points = sorted_points(curve)
    names = shown(points, metrics)
    lines = ["| sigma | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    lines += [f"| {sigma:.4g} | " + " | ".join(cell(values.get(m)) for m in names) + " |" for sigma, values in points]
    return "\n".join(lines) + "\n"


def plot_noise_curve(
    curve: Curve, path: str | os.PathLike, metrics: Sequence[str] = DEFAULT_METRICS, title: str | None = None
) -> Path:
    """PNG of each metric against sigma on a log axis; written atomically (temporary file, then rename)."""
    points = sorted_points(curve)
    names = shown(points, metrics)
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sigmas = [sigma for sigma, _ in points]
    for name in names:
        ax.plot(sigmas, [values.get(name, math.nan) for _, values in points], marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("noise level sigma")
    ax.set_ylabel("metric")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_png(fig, path)
