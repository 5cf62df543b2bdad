"""Peak memory of a block of work: the CUDA allocator's peak on GPU, the peak resident set on CPU.

On CPU the kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs before the block, so the
figure is the block's own peak above the resident set it started from (model and data made before
it are not counted). Freed heap pages are handed back first (glibc malloc_trim): otherwise a block reuses
what earlier work freed and its RSS peak reads near zero. Where that reset is not allowed the
process-lifetime peak is reported and named so.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from pathlib import Path

import torch

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{_STATUS}: no {field} line")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_rss_peak() -> bool:
    _trim_heap()
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yields a dict filled on exit with ``bytes`` (the peak) and ``kind`` (what was measured)."""
    out: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out.update(
            bytes=int(torch.cuda.max_memory_allocated(device)),
            kind="torch.cuda.max_memory_allocated (allocator peak, everything live on the device)",
        )
        return
    reset = _reset_rss_peak()
    base = _status_kib("VmRSS")
    yield out
    peak = _status_kib("VmHWM")
    out.update(
        bytes=1024 * max(peak - base, 0) if reset else 1024 * peak,
        kind="peak RSS above the RSS at the start (VmHWM after clear_refs)"
        if reset
        else "process-lifetime peak RSS (VmHWM; /proc/self/clear_refs not writable)",
    )
