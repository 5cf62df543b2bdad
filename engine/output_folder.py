"""Where an output goes: refused before any work when it cannot be written.

A command that would fail at its first write (a read-only filesystem, a folder of someone else's) says so
before it reads, encodes or trains anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import UsageError


def nearest_folder(path: Path | str) -> Path:
    """``path`` itself if it exists, else its nearest existing parent: what a write there would create in."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def require_writable(path: Path | str, option: str = "--out") -> None:
    """Refuse an output whose nearest existing folder cannot be written.

    ``os.access`` asks the kernel, so a read-only filesystem (EROFS) is caught for every user, root included;
    permission bits only for other users (root writes through them, so for root they are no obstacle).
    """
    folder = nearest_folder(path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {folder} is read-only or not writable; pass {option} to a writable folder")
