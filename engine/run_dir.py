"""A run directory: config.json, metrics.jsonl, last/best checkpoints, eval results."""
from __future__ import annotations

import json
from pathlib import Path

from engine.store.manifest import write_json_atomic


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.last = self.path / "last.safetensors"
        self.best = self.path / "best.safetensors"
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"

    def start(self, config: dict, resume: bool) -> dict | None:
        """Create the directory; on resume return the recorded config, else refuse to clobber a run."""
        if resume:
            if not self.last.is_file():
                raise FileNotFoundError(f"{self.path}: nothing to resume (no last.safetensors); drop --resume")
            return json.loads(self.config.read_text())
        if self.last.is_file():
            raise FileExistsError(f"{self.path}: holds a run already; pass --resume to continue it or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.config, config)
        self.metrics.write_text("")
        return None

    def log(self, record: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Forget records written after the checkpoint a resume starts from, so the log reads as one run."""
        if not self.metrics.is_file():
            return
        keep = [line for line in self.metrics.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.metrics.write_text("".join(f"{line}\n" for line in keep))
