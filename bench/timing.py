"""Timed windows of whole steps: warm-up, then repeated windows with the device synchronised at both edges.

The median over windows, not the mean, and its interquartile range: a shared machine's hiccups show
up as spread instead of moving the figure. Inside a window nothing syncs, as in training.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3); one value is its own quartiles."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def time_windows(
    step: Callable[[int], torch.Tensor],
    batch: int,
    device: torch.device,
    warmup: int = 3,
    windows: int = 5,
    steps_per_window: int = 5,
) -> dict:
    """samples/s of ``step`` (one training step of ``batch`` samples per call) over timed windows.

    Raises FloatingPointError when the loss goes non-finite: a diverged step is not a timing.
    """
    i = 0
    for i in range(warmup):
        step(i)
    sync(device)
    seconds = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps_per_window):
            i += 1
            loss = step(i)
        sync(device)
        seconds.append(time.perf_counter() - start)
    if not torch.isfinite(loss).item():
        raise FloatingPointError(f"loss is {loss.item()} after {i + 1} steps")
    rates = [batch * steps_per_window / s for s in seconds]
    q1, median, q3 = quartiles(rates)
    return {
        "samples_per_s": median,
        "iqr": [q1, q3],
        "window_seconds": seconds,
        "steps_per_window": steps_per_window,
        "warmup_steps": warmup,
        "step_ms": 1e3 * batch / median,
    }
