"""What every benchmark records about where it ran, and where its result file goes.

One description of the device, the library versions and the result path, so result files of
`bench kernels`, `bench loaders` and `bench throughput` from one machine line up in `bench report`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import torch

from kernels.common import ENV_VAR

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = (
    "numpy",
    "triton",
    "diffusers",
    "zarr",
    "webdataset",
    "nvidia-dali-cuda130",
    "nvidia-dali-cuda120",
    "latent-engine",
)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "cpu"


def driver_version() -> str | None:
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None


def versions(cuda: bool) -> dict:
    """Python, torch, CUDA, the NVIDIA driver (on CUDA) and the installed versions of PACKAGES (None if absent)."""
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": driver_version() if cuda else None,
    }
    for dist in PACKAGES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


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
