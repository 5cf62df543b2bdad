"""The roofline cost model of bench.predict: the GPUs' peaks, the bytes and FLOPs of every dispatched op, and
a step time of ``max(flops / peak, bytes / HBM bandwidth)`` per op, summed (no launch overhead, no overlap,
no cache reuse between ops): a lower bound on the step, so samples/s and MFU are upper bounds. Predicted,
never measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.flop_count import op_flops


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_flops: float  # dense BF16/FP16 tensor-core peak, FLOP/s
    tf32_flops: float  # dense TF32 tensor-core peak (fp32 convolutions: cudnn.allow_tf32 is on by default)
    fp32_flops: float  # FP32 without tensor cores (fp32 matmuls: cuda.matmul.allow_tf32 is off by default)
    hbm_bytes_per_s: float
    memory_bytes: float


# NVIDIA's datasheets (nvidia.com/en-us/data-center/h100 and /h200, "Technical Specifications", SXM form
# factor) list BF16 Tensor Core 1,979 TFLOPS and TF32 989 TFLOPS "with sparsity" (dense: half), FP32
# 67 TFLOPS, for both parts (same GH100 die and clocks); they differ in memory: H100 SXM 80 GB HBM3 at
# 3.35 TB/s, H200 SXM 141 GB HBM3e at 4.8 TB/s. The dense peaks to one more digit (989.4, 494.7, 66.9)
# are the ones NVIDIA's Hopper architecture whitepaper tabulates for H100 SXM5.
# The two GPUs of the published measurements bench.calibrated is fitted to. NVIDIA A100 datasheet (SXM4 80GB):
# BF16 tensor 312 TFLOPS, TF32 156 TFLOPS (dense), FP32 19.5 TFLOPS, HBM2e 2,039 GB/s. NVIDIA Ampere GA102
# whitepaper (GeForce RTX 3090): FP16/BF16 tensor with FP32 accumulate 71 TFLOPS and TF32 35.6 TFLOPS (dense),
# FP32 35.6 TFLOPS, GDDR6X 936 GB/s, 24 GB.
GPUS = {
    "h100-sxm": GPU("NVIDIA H100 SXM (predicted)", 989.4e12, 494.7e12, 66.9e12, 3.35e12, 80e9),
    "h200-sxm": GPU("NVIDIA H200 SXM (predicted)", 989.4e12, 494.7e12, 66.9e12, 4.8e12, 141e9),
    "a100-sxm": GPU("NVIDIA A100 SXM4 80GB (predicted)", 312e12, 156e12, 19.5e12, 2.039e12, 80e9),
    "rtx-3090": GPU("NVIDIA GeForce RTX 3090 (predicted)", 71e12, 35.6e12, 35.6e12, 0.936e12, 24e9),
}
_ALIASES = {"h100": "h100-sxm", "h200": "h200-sxm", "a100": "a100-sxm", "3090": "rtx-3090"}


def gpu(device: str) -> tuple[str, GPU]:
    key = _ALIASES.get(device.lower(), device.lower())
    if key not in GPUS:
        raise ValueError(f"unknown device {device!r}; known: {', '.join(GPUS)} (or {', '.join(_ALIASES)})")
    return key, GPUS[key]


class Roofline(TorchDispatchMode):
    """Per dispatched op: FLOPs (bench.flop_count's table), bytes read and written, the dtype it runs in. A
    depthwise convolution (one input channel per group) is named ``<op>:depthwise``, as its kernels run far
    below the rates of dense convolutions (bench.calibrated prices it apart)."""

    FREE = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view"})
    FREE |= {"lift_fresh", "detach", "alias", "set_", "resize_", "_local_scalar_dense", "sym_size", "sym_stride"}

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int, int, torch.dtype | None]] = []

    CONVOLUTIONS = frozenset({"convolution", "convolution_backward"})

    @staticmethod
    def _depthwise(args) -> bool:
        """aten.convolution(input, weight, ..., groups) / convolution_backward(grad, input, weight, ..., groups,
        mask): groups > 1 with one input channel per group."""
        weight = args[1] if len(args) == 9 else args[2]
        groups = args[8] if len(args) == 9 else args[9]
        return groups > 1 and weight.shape[1] == 1

    @staticmethod
    def touched(t: torch.Tensor) -> int:
        """Bytes an op reads of t: broadcast (stride-0) dimensions once."""
        n = 1
        for size, stride in zip(t.shape, t.stride()):
            n *= size if stride != 0 else 1
        return n * t.element_size() if t.numel() else 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in self.CONVOLUTIONS and self._depthwise(args):
            name += ":depthwise"
        if func.is_view or name in self.FREE or func.namespace == "prim":
            return out
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if name == "copy_" and inputs:
            inputs = inputs[1:]  # the destination is written, not read
        outputs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        moved = sum(self.touched(t) for t in inputs) + sum(o.numel() * o.element_size() for o in outputs)
        flops = op_flops(func, args, kwargs, out)
        dtype = next((t.dtype for t in inputs if t.is_floating_point()), None)
        self.ops.append((name, flops, moved, dtype))
        return out


def roofline_time(ops, device: GPU) -> tuple[float, float]:
    """(step seconds, seconds of ops bound by memory bandwidth) for ops of (name, flops, bytes, dtype)."""
    total = memory_bound = 0.0
    for name, flops, moved, dtype in ops:
        if dtype in (torch.bfloat16, torch.float16) or not flops:
            peak = device.bf16_flops
        elif name.startswith("convolution") and torch.backends.cudnn.allow_tf32:
            peak = device.tf32_flops
        elif torch.backends.cuda.matmul.allow_tf32:
            peak = device.tf32_flops
        else:
            peak = device.fp32_flops
        compute, memory = flops / peak, moved / device.hbm_bytes_per_s
        total += max(compute, memory)
        memory_bound += memory if memory >= compute else 0.0
    return total, memory_bound
