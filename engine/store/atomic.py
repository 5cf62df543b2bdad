"""Stores appear and are replaced whole: built beside their final path, then renamed into place.

Readers and other workers see no store or a whole one, never half a skeleton; when several workers
race to create one, the first rename wins and the others discard their copy. A store is replaced
(``--overwrite``) only once its successor is complete: the successor is encoded in ``staging_path``,
where a killed run resumes, and swapped in by two renames under a lock, so the old store stays
usable until the new one is whole.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def create_by_rename(path: Path, build: Callable[[Path], None]) -> bool:
    """Run ``build`` on a temporary sibling of ``path``, rename it to ``path``; False if ``path`` appeared first."""
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


def staging_path(path: Path) -> Path:
    """Where the replacement of the store at ``path`` is encoded (the same for every run of a command)."""
    return path.with_name(f".{path.name}.replacement")


def swap_in(path: Path, staging: Path) -> bool:
    """Replace the store at ``path`` by the complete one at ``staging``; False if another worker did it first.

    A kill between the two renames leaves ``path`` absent and ``staging`` whole: the next run of the
    same command finds it complete and finishes the swap.
    """
    parent = os.open(path.parent, os.O_RDONLY)  # the lock: the directory both names live in, no lock file left over
    try:
        fcntl.flock(parent, fcntl.LOCK_EX)
        if not staging.exists():
            return False
        if path.exists():
            os.rename(path, path.with_name(f".{path.name}.replaced-{os.getpid()}"))
        os.rename(staging, path)
    finally:
        os.close(parent)
    remove_replaced(path)
    return True


def remove_replaced(path: Path) -> None:
    """Delete what earlier swaps of ``path`` moved away (a kill may have left some)."""
    for old in path.parent.glob(f".{path.name}.replaced-*"):
        shutil.rmtree(old, ignore_errors=True)
