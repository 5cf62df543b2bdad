"""Open a latent store of either container behind one interface, checked before it is used."""

from __future__ import annotations

import time
from pathlib import Path

from engine.store.container import Container, SplitData
from engine.store.formats import store_format
from engine.store.integrity import RECORD, quick_check, record_manifest, summarise
from engine.store.manifest import StoreError

# an addition to a sealed store (teacher logits, reconstructions, views) writes integrity.json and then the manifest,
# each atomically: a reader that opens the store between the two sees them disagree for a moment, so a failed check
# is looked at once more after this long before it is a damaged store
SETTLE_S = 0.5


class LatentStore:
    def __init__(self, path: Path, manifest: dict, container: Container, writable: bool = False):
        self.path, self.manifest, self.container = path, manifest, container
        self._opened = container.open(path, writable)

    @property
    def format(self) -> str:
        """The container's name (``--format``), for reports."""
        return self.container.name

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def require_complete(self) -> None:
        """Refuse a store whose encode has not finished: its unwritten blocks would give short epochs."""
        if not self.complete:
            raise StoreError(
                f"{self.path}: encode has not finished (manifest.complete is false); run the same "
                "`engine encode` command again to resume it, or wait for the process writing it"
            )

    def split(self, name: str) -> SplitData:
        if name not in self.manifest["splits"]:
            raise StoreError(f"{self.path}: no split {name!r}; the store has {self.splits}")
        return self._opened.split(name)

    def set_manifest(self, manifest: dict) -> None:
        """Write the manifest; once the store is sealed (integrity.json), its field digests first, so that only
        the engine's own changes (teacher logits, reconstructions) pass the check that refuses hand edits."""
        if (self.path / RECORD).is_file():
            record_manifest(self.path, manifest)
        self._opened.set_manifest(manifest)
        self.manifest = manifest


def open_store(
    path: str | Path, require_complete: bool = True, writable: bool = False, check: bool | None = None
) -> LatentStore:
    """Open a store; by default refuse one whose encode has not finished (``LatentStore.require_complete``).

    ``check`` (default: when completeness is required) runs the quick integrity check, so a missing or
    truncated file is refused here, before any step, and never read back as zeros.
    """
    path = Path(path)
    container = store_format(path)
    store = LatentStore(path, container.read_manifest(path), container, writable=writable)
    if require_complete:
        store.require_complete()
    problems = quick_check(store) if (require_complete if check is None else check) else []
    if problems:  # caught between an engine addition's two writes (integrity.json, then the manifest)? look again
        time.sleep(SETTLE_S)
        store = LatentStore(path, container.read_manifest(path), container, writable=writable)
        problems = quick_check(store)
    if problems:
        raise StoreError(
            "; ".join(summarise(problems)[:3])
            + (
                f" (and {len(problems) - 3} more problems; `engine inspect {path}` lists them)"
                if len(problems) > 3
                else ""
            )
        )
    return store
