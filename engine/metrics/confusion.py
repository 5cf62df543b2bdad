"""The confusion matrix (``Predictions.confusion()``: JSON) as a PNG.

The PNG colours each row by its share of the row (what a reader compares between a frequent and a
rare class) and writes the counts in the cells.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.metrics.figure_file import save_png


def plot_confusion(matrix: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """PNG of a ``Predictions.confusion()`` result: cells shaded by their share of the row, labelled with the count."""
    counts = np.asarray(matrix["counts"], dtype=np.int64)
    rows, columns = matrix["rows"], matrix["columns"]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(1.6 + 0.55 * len(columns), 1.2 + 0.45 * len(rows)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (r, c), n in np.ndenumerate(counts):
        ax.text(c, r, str(n), ha="center", va="center", fontsize=8, color="white" if share[r, c] > 0.5 else "black")
    tilt = max(len(str(c)) for c in columns) > 5  # class names wider than a cell: tilted, or they run into each other
    ax.set_xticks(range(len(columns)), columns, rotation=35 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylabel(matrix["axes"][0])
    ax.set_xlabel(matrix["axes"][1])
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
