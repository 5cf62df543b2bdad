"""`engine train --log tensorboard`'s writer: the numbers it is given come back from the event files."""

import sys

import pytest

from engine.errors import UsageError
from engine.training.tensorboard import TRAINING_LOGS, NoLog, TensorBoardLog


def test_loss_lr_val_metrics_and_the_noise_curve_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = TRAINING_LOGS["tensorboard"](tmp_path)
    for step in range(1, 4):
        log.step(step, loss=1.0 / step, lr=1e-3 * step)
    log.epoch(0, {"balanced_accuracy": 0.6, "auroc": float("nan"), "recall/a": 0.5, "per_class": {"a": {}}})
    log.epoch(1, {"balanced_accuracy": 0.7, "auroc": 0.8, "recall/a": 0.75})
    log.noise_curve({"2.0": {"balanced_accuracy": 0.4}, "0.01": {"balanced_accuracy": 0.9}})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()

    def scalars(tag):
        return [(e.step, pytest.approx(e.value)) for e in events.Scalars(tag)]

    assert scalars("train/loss") == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert scalars("train/lr") == [(1, 1e-3), (2, 2e-3), (3, 3e-3)]
    assert scalars("val/balanced_accuracy") == [(0, 0.6), (1, 0.7)]
    assert scalars("val/auroc") == [(1, 0.8)]  # the NaN of epoch 0 is left out
    assert scalars("val/recall/a") == [(0, 0.5), (1, 0.75)]
    assert scalars("noise_curve/balanced_accuracy") == [(0, 0.9), (1, 0.4)]  # by ascending sigma
    assert "noise_curve/table/text_summary" in events.Tags()["tensors"]


def test_without_tensorboard_the_option_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(UsageError, match="pip install tensorboard"):
        TensorBoardLog(tmp_path)


def test_the_default_writes_nothing(tmp_path):
    log = TRAINING_LOGS["none"](tmp_path)
    assert isinstance(log, NoLog)
    log.step(1, 0.5, 1e-3)
    log.epoch(0, {"balanced_accuracy": 0.5})
    log.noise_curve({1.0: {"balanced_accuracy": 0.5}})
    log.close()
    assert list(tmp_path.iterdir()) == []
