"""A calibrated step time for bench.predict: the roofline (``bench.roofline``, an upper bound on samples/s) with
the efficiencies real GPUs reach, fitted to published training throughputs. Predicted, never measured.

Per dispatched op of the simulated step (``bench.simulated_step.simulate``)::

    gpu_op = max(flops / (tensor_core_efficiency * peak), bytes / (bandwidth_efficiency * HBM), kernel_floor)

with a depthwise convolution (forward or backward, ``<op>:depthwise``) moving its bytes at
``depthwise_efficiency * HBM`` instead (cuDNN's depthwise kernels run far below the copy rate); ops that move
nothing and compute nothing launch no kernel. The step takes ``max(sum of gpu_op, ops * dispatch)``: an eager
step's host enqueues every op (``dispatch`` each) while the GPU runs the earlier ones, so whichever is longer
sets the pace; captured in a CUDA graph (``graphs=True``) the host term goes.

Fitted (least squares on the log of predicted / published samples/s): the three efficiencies. Fixed, not
fitted, because at the fit points (batch 256 at 224 px, every kernel long) neither binds: the kernel floor,
3 us (a launch's minimum duration plus the gap to the next on an idle stream), and the host dispatch, 5 us
per op (the issue's count for a ConvNeXt-T latent step: ~5 ms of eager dispatch for ~950 launches). Three
efficiencies over three points: the fit errors (``FIT``) show how well one set of efficiencies explains both
GPUs and both networks, not an error on new cases; measured rows on an H100/H200 are what would test it.

The published points (``FIT_POINTS``), and what bench's simulated step assumes of them:

- timm's training benchmark (``results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv``): RTX 3090,
  PyTorch 1.12 / CUDA 11.3, AMP (fp16 autocast), NCHW, batch 256, 224 px, random inputs: ConvNeXt-T
  (``convnext_tiny``) 813 img/s, ResNet-50 1,218 img/s.
- NVIDIA's DeepLearningExamples ResNet-50 v1.5 for PyTorch, training performance on one A100 80GB: AMP,
  batch 256, 224 px, channels-last (NHWC): 2,470 img/s.

Simulated as bench's own steps at batch 256 in bf16 autocast (same widths and tensor-core peaks as fp16 on
these parts), Adam (timm's benchmark uses SGD, NVIDIA's SGD with momentum: Adam's update is a few more
element-wise passes over the weights), the image side with bench's on-device flip and rotation, ConvNeXt-T as
the registry's ``convnext-t`` on a (3, 224, 224) input (timm's ``convnext_tiny`` layout, 28.6 M parameters)
with the latent objective's noise pass: each a little more work than the published steps, so the fitted
efficiencies are, if anything, high.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.roofline import GPU, gpu


@dataclass(frozen=True)
class Calibration:
    bandwidth_efficiency: float  # fraction of HBM bandwidth an element-wise/norm op reaches
    tensor_core_efficiency: float  # fraction of the dense tensor-core peak a matmul/convolution reaches
    depthwise_efficiency: float  # fraction of HBM bandwidth a depthwise convolution reaches
    kernel_floor_s: float = 3e-6  # the shortest a kernel takes, launch gap included
    dispatch_s: float = 5e-6  # host time to dispatch one op in an eager step

    def step_time(self, ops, device: GPU, graphs: bool = False) -> float:
        """Seconds of one step of ``ops`` (name, flops, bytes, dtype) on ``device``; eager unless ``graphs``."""
        gpu_s = sum(self._op_time(op, device) for op in ops)
        return gpu_s if graphs else max(gpu_s, len(ops) * self.dispatch_s)

    def _op_time(self, op, device: GPU) -> float:
        name, flops, moved, dtype = op
        if not flops and not moved:
            return 0.0
        bandwidth = self.depthwise_efficiency if name.endswith(":depthwise") else self.bandwidth_efficiency
        compute = flops / (self.tensor_core_efficiency * _peak(name, flops, dtype, device)) if flops else 0.0
        return max(compute, moved / (bandwidth * device.hbm_bytes_per_s), self.kernel_floor_s)


def _peak(name: str, flops: int, dtype, device: GPU) -> float:
    """The peak the roofline prices this op at (bench.roofline.roofline_time's choice)."""
    if dtype in (torch.bfloat16, torch.float16) or not flops:
        return device.bf16_flops
    if name.startswith("convolution") and torch.backends.cudnn.allow_tf32:
        return device.tf32_flops
    return device.tf32_flops if torch.backends.cuda.matmul.allow_tf32 else device.fp32_flops


@dataclass(frozen=True)
class FitPoint:
    device: str
    model: str
    size: int  # px of the (3, size, size) input
    batch: int
    channels_last: bool
    samples_per_s: float  # published
    source: str


FIT_POINTS = (
    FitPoint("rtx-3090", "convnext-t", 224, 256, False, 813.0, "timm train benchmark, RTX 3090, AMP, NCHW"),
    FitPoint("rtx-3090", "resnet50", 224, 256, False, 1218.0, "timm train benchmark, RTX 3090, AMP, NCHW"),
    FitPoint("a100-sxm", "resnet50", 224, 256, True, 2470.0, "NVIDIA DeepLearningExamples, A100 80GB, AMP, NHWC"),
)

# The result of fit() (python -m bench.calibrated prints it again): the efficiencies, and per fit point the
# relative error of the calibrated samples/s against the published one.
# The tensor-core efficiency sits at its bound: at these points the roofline's byte count (no fusion) leaves the
# matmuls too little time for any lower efficiency to help the fit; the three points do not pin it down.
CALIBRATION = Calibration(bandwidth_efficiency=0.5853, tensor_core_efficiency=1.0, depthwise_efficiency=0.3842)
FIT_ERRORS = (0.0, -0.113, 0.102)  # calibrated / published - 1 at FIT_POINTS, in order


def _ops(point: FitPoint) -> tuple:
    """The simulated step of a fit point, its Adam torch's foreach one, a ConvNeXt's blocks timm's eager modules and
    each weight cast by autocast: the published runs (PyTorch 1.12, SGD) predate torch's fused optimizers and ran no
    fused kernels, and the efficiencies were fitted to this step."""
    from bench.simulated_step import simulate

    shape = (3, point.size, point.size)
    return simulate(
        point.model,
        shape,
        point.batch,
        channels_last=point.channels_last,
        adam="foreach",
        fused_blocks=False,
        cast_weights_once=False,
    ).ops


def samples_per_s(calibration: Calibration, point: FitPoint) -> float:
    """Calibrated samples/s of a fit point's simulated step (eager, as the published runs were)."""
    return point.batch / calibration.step_time(_ops(point), gpu(point.device)[1])


def fit_errors(calibration: Calibration) -> dict[str, float]:
    """Relative error (calibrated / published - 1) at each fit point, named by its source, model and device."""
    return {_label(p): samples_per_s(calibration, p) / p.samples_per_s - 1 for p in FIT_POINTS}


def _label(point: FitPoint) -> str:
    return f"{point.model} @ {point.size}px on {point.device} ({point.source}): {point.samples_per_s:g} img/s"


def fit() -> tuple[Calibration, dict[str, float]]:
    """The three efficiencies that best reproduce FIT_POINTS (least squares on log samples/s, each in
    [0.02, 1]), and the fit error at each point."""
    from scipy.optimize import least_squares

    def residuals(x: np.ndarray) -> list[float]:
        c = Calibration(*x)
        return [math.log(samples_per_s(c, p) / p.samples_per_s) for p in FIT_POINTS]

    found = least_squares(residuals, x0=[0.7, 0.5, 0.3], bounds=([0.02] * 3, [1.0] * 3), diff_step=1e-3)
    calibration = Calibration(*(round(float(v), 4) for v in found.x))
    return calibration, fit_errors(calibration)


def describe(calibration: Calibration = CALIBRATION) -> str:
    """One line for a predicted row: what its calibrated figure assumed."""
    return (
        f"roofline with {calibration.bandwidth_efficiency:.0%} of HBM bandwidth, "
        f"{calibration.tensor_core_efficiency:.0%} of the tensor-core peak, depthwise convolutions at "
        f"{calibration.depthwise_efficiency:.0%} of HBM bandwidth, "
        f"a {calibration.kernel_floor_s * 1e6:g} us kernel floor and {calibration.dispatch_s * 1e6:g} us host "
        "dispatch per op (eager); fitted to timm's RTX 3090 and NVIDIA's A100 training throughputs (bench.calibrated)"
    )


if __name__ == "__main__":  # python -m bench.calibrated: refit and print the constants and errors
    calibration, errors = fit()
    print(calibration)
    for label, error in errors.items():
        print(f"{error:+.1%}  {label}")
