"""Where a measurement ran: the device's name and the library versions, as every result file records them, and
what the host offers a job (its usable cores, its available memory)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

import torch

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


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def host_memory_available() -> int:
    """Bytes of host memory available to new work without swapping: the kernel's MemAvailable, or free pages."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
