"""Free space, checked before a store is written: a full disk found at the first block, not the last."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.store.manifest import StoreError

MARGIN = 16 << 20  # metadata, the manifest, the record: a few files whatever the store's size


def require_free_space(path: Path, need: int) -> None:
    """A StoreError naming ``path``, the need and what is free when ``need`` bytes (plus a margin) do not fit."""
    disk = next(p for p in (path, *path.parents) if p.exists())  # the store (or its folder) may not exist yet
    free = shutil.disk_usage(disk).free
    if need + MARGIN > free:
        raise StoreError(
            f"{path}: writing it needs about {_size(need + MARGIN)}, {_size(free)} is free on its disk ({disk}); "
            "free some space or choose another --out"
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
