"""One writer at a time: an exclusive lock on a small file holding the writer's pid, for a store being encoded
(beside it), a run directory being trained (its ``run.lock``, engine/training/run_dir.py) and a store's teacher
logits being added by a gap study (whose shards wait their turn: engine/gap/run.py).

The OS drops a ``flock`` when its holder dies, so a killed encode or run never blocks its own resume, while a
second writer stops at once and names the process it would race. The lock file stays: deleting it would let a
waiter lock an unlinked file while a newcomer locks a fresh one. A store's lock lives beside the store (the
store itself appears by rename, and may not exist yet).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from engine.errors import UsageError


class WriterLock:
    """Held from ``acquire`` until ``release`` (or the end of the process)."""

    def __init__(self, file: Path, what: str, after: str = "rerun the same command then: it finds the work done"):
        # ``what``: the command that holds it; ``after``: what the refused one can do once the holder finishes
        self.file, self.what, self.after = file, what, after
        self._fd: int | None = None

    def acquire(self, target: Path, wait: bool = False) -> WriterLock:
        """Lock, or a UsageError naming ``target`` and the holder's pid when another process writes it; with
        ``wait``, block until the holder is done (writers whose turns are short and whose work does not clash)."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"{target}: another `{self.what}` (pid {holder}) is writing it; wait for it to finish "
                f"({self.after}), or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def encode_lock(out: Path, rank: int, world_size: int) -> WriterLock:
    """The lock of one encode worker of the store at ``out`` (workers of one multi-worker encode hold one each)."""
    suffix = "" if world_size == 1 else f".rank{rank}"
    return WriterLock(out.with_name(f".{out.name}.encode{suffix}.lock"), "engine encode")


def teacher_lock(store: Path) -> WriterLock:
    """The lock of the store's teacher logits: the shards and parallel runs of a gap study each add their units'
    logits to the same stores, and every addition rewrites the manifest."""
    return WriterLock(store.with_name(f".{store.name}.teachers.lock"), "engine gap (teacher logits)")
