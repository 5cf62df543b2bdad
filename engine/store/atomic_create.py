"""Create a store beside its final path and rename it into place.

Readers and other workers see no store or a whole empty one, never half a skeleton; when several
workers race, the first rename wins and the others discard their copy.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


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
