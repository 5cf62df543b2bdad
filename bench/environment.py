"""What every benchmark records about where it ran, and where its result file goes.

The device and versions come from engine.environment (what `engine gap` records too); the result path
puts the device in the file name, so result files of one machine line up in `bench report`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch  # noqa: F401  (kept for callers' type hints)

from engine.environment import (  # noqa: F401  (re-exported: bench's one place)
    device_name,
    host_memory_available,
    usable_cores,
    versions,
)
from kernels.common import ENV_VAR

RESULTS = Path(__file__).resolve().parent / "results"


def result_path(kind: str, device: str) -> Path:
    """bench/results/<kind>-<device slug>.json: the device in the file name, as the protocol asks."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return RESULTS / f"{kind}-{slug}.json"


@contextlib.contextmanager
def kernels_env(choice: str) -> Iterator[None]:
    """LATENT_ENGINE_KERNELS (the fused-kernels switch of noise injection and the models) for a block."""
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = choice
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old
