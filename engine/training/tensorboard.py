"""Training curves in TensorBoard (`engine train --log tensorboard`): loss, learning rate, validation metrics
per epoch and the test noise-level curve, written with torch's SummaryWriter under ``<run>/tensorboard``.

metrics.jsonl stays the record (resume, the gap study and the tests read it); this is a view of the same numbers
for a person who watches runs in TensorBoard, as MONAI and Lightning users do. tensorboard is an optional extra
(``pip install latent-engine[log]``), imported only when asked for. ``--log none`` (the default) is ``NoLog``:
the same calls, nothing written, so the training loop never asks which log it has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from engine.errors import UsageError
from engine.metrics.noise_curve import Curve, noise_curve_table, sorted_points


class NoLog:
    """The default: every call does nothing."""

    def __init__(self, run_dir: Path | None = None):
        pass

    def step(self, step: int, loss: float, lr: float) -> None:
        pass

    def epoch(self, epoch: int, val_metrics: Mapping[str, object]) -> None:
        pass

    def noise_curve(self, curve: Curve) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLog(NoLog):
    """Event files under ``run_dir/tensorboard``: train/loss and train/lr per step, val/<metric> per epoch, and
    noise_curve/<metric> per level (step = the level's index by ascending sigma; the sigmas as a text table)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise UsageError(
                "--log tensorboard: tensorboard is not installed; pip install tensorboard (or --log none)"
            ) from err
        self.path = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.path))

    def step(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, epoch: int, val_metrics: Mapping[str, object]) -> None:
        """Every number of the epoch's validation metrics (per-class ones too); NaN (undefined) is left out."""
        for name, value in val_metrics.items():
            if isinstance(value, int | float) and not math.isnan(value):
                self.writer.add_scalar(f"val/{name}", value, epoch)
        self.writer.flush()

    def noise_curve(self, curve: Curve) -> None:
        if not curve:
            return
        points = sorted_points(curve)
        for level, (_, metrics) in enumerate(points):
            for name, value in metrics.items():
                if isinstance(value, int | float) and not math.isnan(value):
                    self.writer.add_scalar(f"noise_curve/{name}", value, level)
        self.writer.add_text("noise_curve/table", noise_curve_table(curve))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


TRAINING_LOGS = {"none": NoLog, "tensorboard": TensorBoardLog}  # --log's choices
