"""Writing a matplotlib figure to a PNG so that a reader never sees half a file."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write the figure to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
