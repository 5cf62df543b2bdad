"""Free space, checked before a store is written or gains a field (reconstructions, teacher logits): a full disk
found at the first block, not the last."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.store.manifest import StoreError

MARGIN = 16 << 20  # metadata, the manifest, the record: a few files whatever the store's size
ADDED = "free some space on its disk (a field added to a store is written inside it, not to another --out)"


def require_free_space(path: Path, need: int, fix: str = "free some space or choose another --out") -> None:
    """A StoreError naming ``path``, the need, what is free and ``fix`` when ``need`` bytes (plus a margin) do not
    fit."""
    disk = next(p for p in (path, *path.parents) if p.exists())  # the store (or its folder) may not exist yet
    free = shutil.disk_usage(disk).free
    if need + MARGIN > free:
        raise StoreError(
            f"{path}: writing it needs about {_size(need + MARGIN)}, {_size(free)} is free on its disk ({disk}); {fix}"
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
