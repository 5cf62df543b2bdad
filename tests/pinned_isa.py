"""Bit-exact records made the same on every x86-64 CPU: a record runs in a child process whose CPU kernels are
pinned to AVX2.

The last digits of a float op depend on which vector instructions its kernel picks (an AVX-512 build of a conv or
a matmul sums in another order than the AVX2 one), and torch, oneDNN and MKL pick when they load, so a fixture
recorded on a CPU with AVX-512 cannot be met on one without it. Pinned to AVX2, which every x86-64 CPU of the
last decade has, and with oneDNN off (its blocking follows the CPU's caches), a record means the same on each of
them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PINNED_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
REPO = Path(__file__).resolve().parents[1]


def is_pinned() -> bool:
    """This process runs with the pinned instruction set."""
    return all(os.environ.get(k) == v for k, v in PINNED_ISA.items())


# oneDNN picks its convolution blocking from the CPU's caches as well as its instruction set, so its sums differ
# between an Intel and an AMD CPU at the same ISA; without it, convolutions run as ATen's im2col and MKL's GEMM,
# which MKL_CBWR makes the same on every CPU of the branch
WITHOUT_ONEDNN = (
    "import runpy, sys, torch; torch.backends.mkldnn.enabled = False; "
    "module = sys.argv.pop(1); runpy.run_module(module, run_name='__main__', alter_sys=True)"
)


def run_pinned(module: str, *args: str) -> None:
    """``python -m module *args`` from the repository root, with the instruction set pinned and without oneDNN."""
    env = {**os.environ, **PINNED_ISA, "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-c", WITHOUT_ONEDNN, module, *args]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, f"python -m {module} {' '.join(args)}:\n{done.stderr[-4000:]}"
