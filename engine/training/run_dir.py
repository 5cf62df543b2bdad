"""A run directory: config.json, metrics.jsonl, last/best checkpoints, eval results, and its lock.

One writer per run directory: ``start`` takes an exclusive lock on ``run.lock`` (holding the writer's
pid) for as long as the run lives. The OS drops the lock when its holder dies, so a killed run never
blocks its own ``--resume``, while a second ``engine train`` into the same ``--out`` stops at once. Holding the
lock, it removes the partial checkpoint files a killed writer left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import ExistingOutputError, MissingInputError
from engine.store.lock import WriterLock
from engine.store.manifest import write_json_atomic
from engine.training.checkpoint import remove_partial_checkpoints


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.last = self.path / "last.safetensors"
        self.best = self.path / "best.safetensors"
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.lock_file = self.path / "run.lock"
        self._lock = WriterLock(self.lock_file, "engine train", "then resume it with --resume")

    def lock(self, resume: bool) -> None:
        """Hold ``run.lock`` exclusively until ``release`` or the end of the process; a run to resume must exist,
        a new one must not."""
        if resume and not self.last.is_file():
            raise MissingInputError(f"{self.path}: nothing to resume (no last.safetensors); drop --resume")
        self._lock.acquire(self.path)
        remove_partial_checkpoints(self.path)  # the lock is ours: no other writer is writing one
        if not resume and self.last.is_file():
            self.release()
            raise ExistingOutputError(
                f"{self.path}: holds a run already; pass --resume to continue it or choose another --out"
            )

    def start(self, config: dict, resume: bool) -> dict | None:
        """The recorded config of a resumed run; a new run's config.json and an empty metrics log."""
        if resume:
            return json.loads(self.config.read_text())
        write_json_atomic(self.config, config)
        self.metrics.write_text("")
        return None

    def release(self) -> None:
        self._lock.release()

    def log(self, record: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Forget records written after the checkpoint a resume starts from, so the log reads as one run."""
        if not self.metrics.is_file():
            return
        keep = [line for line in self.metrics.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.metrics.write_text("".join(f"{line}\n" for line in keep))
