"""Figures of a GPU training step at the paper's scale, computed without a GPU and labelled predicted.

The step is bench's own (``bench.train_steps.make_step``: the engine's objective, ``train_step``, Adam),
run on fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``): every shape, dtype and
allocation is real, no data is, so batch 256 at 512 px takes seconds and no memory. Exact there:

- FLOPs per sample, by ``bench.flop_count`` (grouped and depthwise weight gradients counted right);
- saved-activation bytes per sample: the unique storages autograd saves for backward
  (``saved_tensors_hooks``), less parameters and autocast's copies of them (per step, not per sample);
- peak memory of two whole steps (forward, backward, Adam; the second is the steady state: Adam's state
  exists and the first step's gradients live until ``zero_grad``), by
  ``torch.distributed._tools.mem_tracker.MemTracker``: every storage counted from the op that creates it
  until its last reference dies. That is what ``torch.cuda.max_memory_allocated`` measures, less what
  fake tensors cannot show: cuDNN/cuBLAS workspaces, the allocator's 512-byte rounding and the CUDA context.

Predicted, not measured: a roofline step time on H100 SXM and H200 SXM, each dispatched op costing
``max(flops / peak, bytes / HBM bandwidth)`` (bytes: its tensor inputs read and outputs written, views
free, broadcast dimensions read once), summed over the step; no launch overhead, no overlap, no cache
reuse between ops. It bounds the step from below, so samples/s and MFU are upper bounds.

Why CPU fake tensors and not CUDA ones: torch 2.13's FakeTensorMode fakes CUDA only on a CUDA build with
no device visible (c10's ``ensureCUDADeviceGuardSet`` installs its no-op guard only then); on a CPU-only
build ``copy_``, tensor indexing and ``.to("cuda")`` raise "PyTorch is not linked with support for cuda
devices". So the fake tensors live on the CPU and the CUDA run's dtypes are applied explicitly:
``CudaAutocast`` casts as ``torch.autocast("cuda", torch.bfloat16)`` does, from the op lists of torch's
own ``ATen/autocast_mode.h`` (``AT_FORALL_LOWER_PRECISION_FP``, ``AT_FORALL_FP32``, ...), at the Python
call, above autograd (so, as with real autocast, autograd saves the bf16 copies), with the same weight-cast
cache. It wraps exactly the block ``engine.training.objective.autocast`` wraps; weights and Adam state stay
fp32, Adam runs its foreach implementation (the CUDA default). The fused kernels (``kernels``: add_noise,
film_layer_norm, group_norm_film_silu, ...) take their Triton path, as on CUDA: the autograd wrappers
allocate and save exactly what they do on a GPU, and each launch is recorded instead of run (a fake
tensor has no memory to run on), costing one read or write of each tensor it is passed. (Their CPU
references would be the wrong stand-in: add_noise's plain-torch Philox alone moves about 150 GB per
step at batch 256.) Host-side value checks a CUDA step skips (Karras level range) or makes once
(std > 0) are skipped, since a fake tensor has no values to check. One path still differs:
``scaled_dot_product_attention`` takes its math path on CPU tensors, saving the attention matrix that
CUDA's flash kernel recomputes, so for models with attention (adm-b) memory is an upper bound.

``simulate`` patches process-wide hooks (Triton's launch, Adam's foreach default, the engine's autocast)
for the length of a call: run it where no real GPU work runs in other threads.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakIdKeyDictionary

import bench.train_steps as train_steps
from bench.flop_count import flop_counter, op_flops
from bench.train_steps import IMAGE_MODELS, Case, StepOptions, build_net, make_step
from engine.training.objective import TrainingLoss

LABEL = "predicted"
DEFAULT_BATCH = 256


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
GPUS = {
    "h100-sxm": GPU("NVIDIA H100 SXM (predicted)", 989.4e12, 494.7e12, 66.9e12, 3.35e12, 80e9),
    "h200-sxm": GPU("NVIDIA H200 SXM (predicted)", 989.4e12, 494.7e12, 66.9e12, 4.8e12, 141e9),
}
_ALIASES = {"h100": "h100-sxm", "h200": "h200-sxm"}


def gpu(device: str) -> tuple[str, GPU]:
    key = _ALIASES.get(device.lower(), device.lower())
    if key not in GPUS:
        raise ValueError(f"unknown device {device!r}; known: {', '.join(GPUS)} (or h100, h200)")
    return key, GPUS[key]


# --- the CUDA autocast policy, applied to CPU tensors -------------------------------------------------------

# torch 2.13, ATen/autocast_mode.h: the lists TORCH_LIBRARY_IMPL(aten, Autocast, m) registers for CUDA
# (every overload listed there covers the op; conv_transpose2d/3d.input and conv2d.padding map to the same
# Python call). Python-level names that reach these ops in one call are added (__matmul__, F.softmax, ...).
LOWER_PRECISION_FP = frozenset(
    "_convolution conv1d conv2d conv3d conv_tbc conv_transpose1d conv_transpose2d conv_transpose3d convolution "
    "prelu addmm addmv addr matmul __matmul__ __rmatmul__ einsum mm mv linalg_vecdot linear addbmm baddbmm bmm "
    "chain_matmul linalg_multi_dot _thnn_fused_lstm_cell _thnn_fused_gru_cell lstm_cell gru_cell rnn_tanh_cell "
    "rnn_relu_cell _scaled_dot_product_flash_attention scaled_dot_product_attention".split()
)
FP32 = frozenset(
    "acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow __pow__ __rpow__ "
    "softplus layer_norm native_layer_norm rms_norm group_norm frobenius_norm nuclear_norm "
    "cosine_similarity poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss kl_div "
    "l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss multilabel_margin_loss soft_margin_loss "
    "triplet_margin_loss multi_margin_loss binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp "
    "upsample_nearest1d _upsample_nearest_exact1d upsample_nearest2d _upsample_nearest_exact2d "
    "upsample_nearest3d _upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa "
    "upsample_trilinear3d upsample_bicubic2d _upsample_bicubic2d_aa "
    # Python composites whose one aten call is in the list (F.interpolate -> upsample_*, F.cross_entropy ->
    # log_softmax + nll_loss, both fp32 on CUDA)
    "interpolate cross_entropy".split()
)
FP32_SET_OPT_DTYPE = frozenset(
    "prod softmax log_softmax cumprod cumsum linalg_vector_norm linalg_matrix_norm sum norm".split()
)
PROMOTE = frozenset(
    "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler grid_sample index_put tensordot scatter_add".split()
)


def _eligible(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


class CudaAutocast(TorchFunctionMode):
    """``torch.autocast("cuda", dtype)`` applied to tensors on any device, at the Python call of each op.

    Casts as ATen's CUDA autocast kernels do: lower-precision ops take every floating input in ``dtype``,
    fp32 ops in float32, softmax/sum-like ops get ``dtype=torch.float32`` unless one is given, promote ops
    run in the widest floating input type; other ops run as called. Casts of fp32 leaf tensors that require
    grad (the weights) are cached until the block ends, as autocast's cache does. ``casts`` holds the
    storages of those copies (weakly), so callers can tell weight copies from activations.
    """

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.dtype = dtype
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.casts: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def __exit__(self, *exc):
        self._cache.clear()  # as autocast drops its cache when the outermost block ends
        return super().__exit__(*exc)

    def _cast(self, t, to: torch.dtype):
        if not _eligible(t) or t.dtype == to:
            return t
        cacheable = to == self.dtype and t.dtype == torch.float32 and t.requires_grad and t.is_leaf
        cacheable = cacheable and not t._is_view() and torch.is_autocast_cache_enabled()
        if not cacheable:
            return t.to(to)
        hit = self._cache.get(id(t))
        if hit is None:
            hit = (t, t.to(to))
            self._cache[id(t)] = hit
            self.casts[hit[1].untyped_storage()] = True
        return hit[1]

    def _cast_all(self, args, kwargs, to):
        def one(a):
            if isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
                return type(a)(self._cast(x, to) for x in a)
            return self._cast(a, to)

        return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name in LOWER_PRECISION_FP:
            args, kwargs = self._cast_all(args, kwargs, self.dtype)
        elif name in FP32:
            if not (name == "interpolate" and kwargs.get("mode") == "area"):  # area pools, no upsample op
                args, kwargs = self._cast_all(args, kwargs, torch.float32)
        elif name in FP32_SET_OPT_DTYPE:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            explicit = kwargs.get("dtype") is not None or any(isinstance(a, torch.dtype) for a in args)
            if _eligible(first) and not explicit:
                kwargs["dtype"] = torch.float32
        elif name in PROMOTE:
            flat = [a for a in tree_flatten((args, kwargs))[0] if _eligible(a)]
            to = torch.float32 if any(a.dtype == torch.float32 for a in flat) else self.dtype
            args, kwargs = self._cast_all(args, kwargs, to)
        return func(*args, **kwargs)


# --- the fake step ------------------------------------------------------------------------------------------


class _HostBuiltLoss(TrainingLoss):
    """bench's TrainingLoss with its few constants (class margins, weights) built from real values on the
    host, then made fake: building them checks the class counts, which a fake tensor cannot."""

    def set_epoch(self, epoch: int) -> None:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        target, mode = self.device, torch._guards.active_fake_mode()
        with unset_fake_temporarily():
            self.device = torch.device("cpu")
            super().set_epoch(epoch)
        self.device = target
        self.loss = self.loss._apply(mode.from_tensor)


# Host-side value checks a CUDA step skips (karras_levels' range check runs only on CPU tensors) or makes
# once per tensor version (add_noise's std > 0); a fake tensor has no value to check.
_HOST_CHECKS = ("kernels.noise_levels._check_indices", "kernels.add_noise._check_std_positive")


# Memoised tensor factories the step calls: each simulation gets a fresh cache of its own, so no fake
# tensor outlives its FakeTensorMode in the process's cache and no real cached tensor enters a fake step.
_MEMOISED = ("engine.training.inputs._imagenet_stats",)


@contextlib.contextmanager
def _private_caches() -> Iterator[None]:
    import importlib

    with contextlib.ExitStack() as stack:
        for target in _MEMOISED:
            module, name = target.rsplit(".", 1)
            cached = getattr(importlib.import_module(module), name, None)
            if cached is not None and hasattr(cached, "__wrapped__"):
                stack.enter_context(mock.patch(target, functools.cache(cached.__wrapped__)))
        yield


_LAUNCHES: list = []  # where recorded Triton launches go: the roofline of the step being measured, if any


def _record_launch(kernel, grid):
    """``kernel[grid](*args)`` of a fake step: no kernel runs; the launch is one op reading or writing each
    tensor argument once."""

    def launch(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if _LAUNCHES:
            name = getattr(getattr(kernel, "fn", kernel), "__name__", "triton")
            _LAUNCHES[-1].ops.append((f"triton:{name}", 0, sum(_Roofline.touched(t) for t in tensors), None))

    return launch


@contextlib.contextmanager
def _fused_kernels_as_on_cuda() -> Iterator[None]:
    """The kernels package takes its Triton path for CPU tensors, and launches are recorded, not run."""
    import sys

    from triton.runtime.jit import KernelInterface

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(KernelInterface, "__getitem__", _record_launch))
        for name, module in list(sys.modules.items()):
            if (name == "kernels" or name.startswith("kernels.")) and hasattr(module, "use_triton"):
                stack.enter_context(mock.patch.object(module, "use_triton", lambda x: True))
        yield


def _foreach_like_cuda(params, differentiable, use_fused=False):
    """Adam's default on CUDA tensors (foreach); the CPU default (a loop per tensor) needs less memory."""
    return False, not differentiable


class _Roofline(TorchDispatchMode):
    """Per dispatched op: FLOPs (bench.flop_count's table), bytes read and written, the dtype it runs in."""

    FREE = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view"})
    FREE |= {"lift_fresh", "detach", "alias", "set_", "resize_", "_local_scalar_dense", "sym_size", "sym_stride"}

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int, int, torch.dtype | None]] = []

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


class _SavedBytes:
    """Unique storages autograd saves for backward, split into weights (parameters, autocast's copies of
    them) and activations."""

    def __init__(self, params: list[torch.Tensor], casts: WeakIdKeyDictionary | None):
        self.params = WeakIdKeyDictionary({p.untyped_storage(): True for p in params})
        self.casts = casts
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.activations = self.weights = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()  # views (weight.t(), a slice) share their base's storage
        if st not in self.seen:
            self.seen[st] = True
            if st in self.params or (self.casts is not None and st in self.casts):
                self.weights += st.nbytes()
            else:
                self.activations += st.nbytes()
        return t

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield


@dataclass(frozen=True)
class Simulation:
    """What one fake run of a case measured: all exact except that it is the CPU stand-in of a CUDA run."""

    case: Case
    batch: int
    autocast: bool
    channels_last: bool
    flops: int  # one step, corrected counter
    flops_stock: int  # one step, torch's stock counter
    saved_activation_bytes: int
    saved_weight_bytes: int
    peak_bytes: int
    peak_breakdown: dict = field(repr=False)
    ops: tuple = field(repr=False)  # (name, flops, bytes, dtype) per dispatched op of one step
    params: int = 0


def _case(model: str, shape) -> Case:
    if isinstance(shape, str):
        if model in IMAGE_MODELS:
            return train_steps.image_case(model, int(shape.removesuffix("px")))
        return train_steps.latent_case(model, shape)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape {shape}: expected (C, H, W) of one sample")
    if model in IMAGE_MODELS:
        if shape[0] != 3 or shape[1] != shape[2]:
            raise ValueError(f"{model}: image models take (3, S, S) input, got {shape}")
        return train_steps.image_case(model, shape[1])
    if model not in train_steps.LATENT_MODELS:
        known = ", ".join(train_steps.LATENT_MODELS + IMAGE_MODELS)
        raise ValueError(f"unknown model {model!r}; known: {known}")
    return Case("latent", model, "x".join(map(str, shape)), shape)


@functools.lru_cache(maxsize=32)
def simulate(
    model: str,
    shape: tuple[int, int, int] | str,
    batch: int = DEFAULT_BATCH,
    autocast: bool = True,
    channels_last: bool | None = None,
    loss: str = "ldam-drw",
    kernels: str = "triton",
    foreach: bool = True,
) -> Simulation:
    """Two bench training steps of ``model`` on ``batch`` samples of ``shape`` under FakeTensorMode.

    autocast: the CUDA run's bf16 autocast around the network (``CudaAutocast``); False: fp32 throughout,
    as on a CPU. channels_last: None means bench's GPU default (image models channels-last, latent not).
    kernels: "triton", the fused kernels' CUDA path (launches recorded); "reference", their plain-torch
    CPU path (what a CPU run executes, for checking a simulation against one). foreach: Adam's multi-tensor
    implementation, its default for CUDA tensors; False: its per-tensor loop, the CPU default.
    """
    if kernels not in ("triton", "reference"):
        raise ValueError(f"kernels={kernels!r}: expected 'triton' (as on CUDA) or 'reference' (as on CPU)")
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    case = _case(model, shape)
    if batch < 1:
        raise ValueError(f"batch {batch}: must be at least 1")
    cl = case.space == "image" if channels_last is None else channels_last
    cpu = torch.device("cpu")
    opts = StepOptions(cpu, channels_last=cl, loss=loss, kernels="auto" if kernels == "triton" else "reference")
    with torch.device("meta"):  # weights: shapes (and bench's memory format) only, no values drawn
        net = build_net(case, StepOptions(torch.device("meta"), channels_last=cl))
    policy = CudaAutocast(torch.bfloat16) if autocast else None
    region = (lambda device: policy) if policy is not None else None

    with contextlib.ExitStack() as stack:
        stack.enter_context(FakeTensorMode())
        stack.enter_context(mock.patch.object(train_steps, "TrainingLoss", _HostBuiltLoss))
        if foreach:
            stack.enter_context(mock.patch("torch.optim.adam._default_to_fused_or_foreach", _foreach_like_cuda))
        if kernels == "triton":
            stack.enter_context(_fused_kernels_as_on_cuda())
        stack.enter_context(_private_caches())
        for target in _HOST_CHECKS:
            stack.enter_context(mock.patch(target, lambda *a, **k: None))
        if region is not None:
            stack.enter_context(mock.patch("engine.training.objective.autocast", region))
        net = net._apply(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=cpu))
        tracker = MemTracker()
        tracker.track_external(net)
        with tracker:
            step, net = make_step(case, batch, opts, net=net)
            step(0)  # creates Adam's state; its gradients live on into the next step's forward
            tracker.reset_mod_stats()
            saved = _SavedBytes(list(net.parameters()), policy.casts if policy is not None else None)
            roofline = _Roofline()
            _LAUNCHES.append(roofline)
            try:
                with roofline, flop_counter() as counter, FlopCounterMode(display=False) as stock, saved.hooks():
                    step(1)
            finally:
                _LAUNCHES.remove(roofline)
        peak = tracker.get_tracker_snapshot("peak")
    (snapshot,) = peak.values() if peak else ({"Total": 0},)
    breakdown = {str(getattr(k, "value", k)): int(v) for k, v in snapshot.items()}
    return Simulation(
        case=case,
        batch=batch,
        autocast=autocast,
        channels_last=cl,
        flops=int(counter.get_total_flops()),
        flops_stock=int(stock.get_total_flops()),
        saved_activation_bytes=saved.activations,
        saved_weight_bytes=saved.weights,
        peak_bytes=breakdown.get("Total", 0),
        peak_breakdown=breakdown,
        ops=tuple(roofline.ops),
        params=sum(p.numel() for p in net.parameters()),
    )


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


PEAK_METHOD = (
    "simulated: torch.distributed._tools.mem_tracker.MemTracker under FakeTensorMode over two whole steps "
    "(forward, backward, Adam), every storage live from the op creating it until its last reference dies; "
    "no cuDNN/cuBLAS workspace, allocator rounding or CUDA context"
)


def predict_case(
    model: str,
    shape: tuple[int, int, int] | str,
    batch: int = DEFAULT_BATCH,
    device: str = "h100-sxm",
    *,
    autocast: bool = True,
    channels_last: bool | None = None,
) -> dict:
    """Predicted figures of one bench training step of ``model`` on ``batch`` samples of ``shape`` on ``device``
    (h100-sxm | h200-sxm), as bench throughput would run it there (bf16 autocast, fp32 weights and Adam)."""
    key, spec = gpu(device)
    sim = simulate(model, tuple(shape) if not isinstance(shape, str) else shape, batch, autocast, channels_last)
    step_s, memory_s = roofline_time(sim.ops, spec)
    samples_per_s = batch / step_s if step_s > 0 else math.inf
    return {
        "label": LABEL,
        "device": key,
        "device_name": spec.name,
        "space": sim.case.space,
        "model": model,
        "shape": list(sim.case.shape),
        "case": sim.case.name,
        "source_px": sim.case.source_px,
        "batch": batch,
        "precision": "bf16 autocast (CUDA policy, emulated), fp32 weights and Adam state"
        if autocast
        else "fp32 throughout",
        "channels_last": sim.channels_last,
        "params": sim.params,
        "flops_per_sample": sim.flops / batch,
        "flops_per_sample_stock_counter": sim.flops_stock / batch,
        "flops_method": "bench.flop_count (FlopCounterMode, grouped/depthwise conv backward corrected): "
        "matmuls and convolutions, multiply-add = 2",
        "saved_activation_bytes_per_sample": sim.saved_activation_bytes / batch,
        "saved_weight_bytes": sim.saved_weight_bytes,
        "peak_bytes": sim.peak_bytes,
        "peak_breakdown": sim.peak_breakdown,
        "peak_method": PEAK_METHOD,
        "fits": sim.peak_bytes <= spec.memory_bytes,
        "predicted_step_s": step_s,
        "predicted_samples_per_s": samples_per_s,
        "memory_bound_fraction": memory_s / step_s if step_s > 0 else 0.0,
        "mfu": sim.flops / (step_s * spec.bf16_flops) if step_s > 0 else 0.0,
        "ops": len(sim.ops),
        "roofline": "sum over dispatched ops of max(flops / peak, bytes / HBM bandwidth); peaks: dense "
        f"bf16 {spec.bf16_flops / 1e12:.1f} TFLOP/s, HBM {spec.hbm_bytes_per_s / 1e12:.2f} TB/s; no launch "
        "overhead or overlap, so a lower bound on step time",
        "caveats": "fake CPU tensors with the CUDA autocast policy applied explicitly; fused Triton kernels "
        "allocate and save as on CUDA, each launch costed as one pass over its tensor arguments",
    }


def predict_ratio(latent: dict, image: dict) -> dict:
    """Predicted latent/image throughput and image/latent memory ratios of two predict_case results."""
    if latent.get("label") != LABEL or image.get("label") != LABEL:
        raise ValueError("predict_ratio takes two predict_case results (label 'predicted')")
    if latent["device"] != image["device"]:
        raise ValueError(f"the pair must be predicted for one device, got {latent['device']} and {image['device']}")
    return {
        "label": LABEL,
        "device": latent["device"],
        "latent": latent["case"],
        "image": image["case"],
        "batch": [latent["batch"], image["batch"]],
        "throughput_ratio": latent["predicted_samples_per_s"] / image["predicted_samples_per_s"],
        "memory_ratio": image["peak_bytes"] / latent["peak_bytes"] if latent["peak_bytes"] else math.inf,
        "flops_ratio": image["flops_per_sample"] / latent["flops_per_sample"] if latent["flops_per_sample"] else 0,
        "saved_activation_ratio": image["saved_activation_bytes_per_sample"]
        / latent["saved_activation_bytes_per_sample"]
        if latent["saved_activation_bytes_per_sample"]
        else math.inf,
    }


def paper_pairs(batch: int = DEFAULT_BATCH, devices: tuple[str, ...] = ("h100-sxm", "h200-sxm")) -> list[dict]:
    """The protocol's two pairings at the paper's scale, predicted: convnext-t-film on the flux2 latent of a
    512 px image against resnet50 at 256 px (paper protocol) and at 512 px (same source)."""
    rows = []
    for device in devices:
        latent = predict_case("convnext-t-film", "flux2-512", batch, device)
        rows.append(latent)
        for size, pairing in ((256, "paper protocol"), (512, "same source")):
            image = predict_case("resnet50", (3, size, size), batch, device)
            rows += [image, {"pairing": pairing, **predict_ratio(latent, image)}]
    return rows


if __name__ == "__main__":  # python -m bench.predict: the paper pairs as JSON lines
    import json

    for row in paper_pairs():
        print(json.dumps({k: v for k, v in row.items() if k not in ("roofline", "caveats")}))
