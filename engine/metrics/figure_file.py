"""Writing a matplotlib figure to a PNG so that a reader never sees half a file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write the figure to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


@contextmanager
def png_axes(path: str | os.PathLike, figsize: tuple[float, float], dpi: int = 120) -> Iterator[Axes]:
    """The axes of a new figure, written to ``path`` (``save_png``) when the block ends without an error.

    matplotlib's object API on the Agg canvas: no pyplot state shared between plots and no display needed, so
    a report drawn in a worker or on a headless machine draws the same."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    yield fig.add_subplot()
    fig.tight_layout()
    save_png(fig, path)
