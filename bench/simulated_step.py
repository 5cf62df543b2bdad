"""A GPU training step at the paper's scale, simulated without a GPU: the exact counts ``bench.predict`` turns into
predicted rows.

The step is bench's own (``bench.train_steps.make_step``: the engine's objective, ``train_step``, Adam),
run on fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``): every shape, dtype and
allocation is real, no data is, so batch 256 at 512 px takes seconds and no memory. Exact there:

- FLOPs per sample, by ``bench.flop_count`` (grouped and depthwise weight gradients counted right);
- saved-activation bytes per sample: the unique storages autograd saves for backward
  (``saved_tensors_hooks``), less parameters and autocast's copies of them (per step, not per sample), and
  the inputs a recomputed block (``torch.utils.checkpoint``) keeps by reference: counted by the counter
  ``bench.saved_activations`` counts a real step with, so the two agree on the same step;
- peak memory of two whole steps (forward, backward, Adam; the second is the steady state: Adam's state
  exists and the first step's gradients live until ``zero_grad``), by
  ``torch.distributed._tools.mem_tracker.MemTracker``: every storage counted from the op that creates it
  until its last reference dies. That is what ``torch.cuda.max_memory_allocated`` measures, less what
  fake tensors cannot show: cuDNN/cuBLAS workspaces, the allocator's 512-byte rounding and the CUDA context.

Why CPU fake tensors and not CUDA ones: torch 2.13's FakeTensorMode fakes CUDA only on a CUDA build with no
device visible (c10's ``ensureCUDADeviceGuardSet`` installs its no-op guard only then); on a CPU-only build
``copy_``, tensor indexing and ``.to("cuda")`` raise "PyTorch is not linked with support for cuda devices".
So the fake tensors live on the CPU and the CUDA run's dtypes are applied explicitly:
``bench.cuda_autocast.CudaAutocast`` casts as ``torch.autocast("cuda", torch.bfloat16)`` does, from the op
lists of torch's own ``ATen/autocast_mode.h`` (``AT_FORALL_LOWER_PRECISION_FP``, ``AT_FORALL_FP32``, ...),
at the Python call, above autograd (so, as with real autocast, autograd saves the bf16 copies), with the
same weight-cast cache. It wraps exactly the block ``engine.training.objective.autocast`` wraps; weights and
Adam state stay fp32, and Adam runs the implementation ``engine.training.optimizers.build_optimizer`` picks for
CUDA parameters, torch's fused kernel (``FUSED_DEVICES`` is pointed at the CPU stand-in): ``_fused_adam_`` has a
fake-tensor kernel, so it runs as one op per optimizer over its tensor lists, costed (as every in-place
multi-tensor op here, whose schema returns nothing) at the bytes it reads. The fused kernels
(``kernels``: add_noise, film_layer_norm, group_norm_film_silu, ...) take their Triton path, as on CUDA: the
autograd wrappers allocate and save exactly what they do on a GPU, and each launch is recorded instead of
run (a fake tensor has no memory to run on), costing one read or write of each tensor it is passed. (Their
CPU references would be the wrong stand-in: add_noise's plain-torch Philox alone moves about 150 GB per step
at batch 256.) Host-side value checks a CUDA step skips (Karras level range) or makes once (std > 0) are
skipped, since a fake tensor has no values to check. One path still differs:
``scaled_dot_product_attention`` takes its math path on CPU tensors, saving the attention matrix that CUDA's
flash kernel recomputes, so for models with attention (adm-b) memory is an upper bound.

``simulate`` patches process-wide hooks (Triton's launch, Adam's implementation, the engine's autocast)
for the length of a call: run it where no real GPU work runs in other threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from unittest import mock

import torch
from torch.utils import checkpoint
from torch.utils.flop_counter import FlopCounterMode

import bench.train_steps as train_steps
from bench.cuda_autocast import CudaAutocast
from bench.flop_count import flop_counter
from bench.roofline import Roofline
from bench.saved_activations import SavedTensorCounter
from bench.train_steps import IMAGE_MODELS, Case, StepOptions, build_net, make_step
from engine.training import optimizers, weight_casts
from engine.training.objective import TrainingLoss

DEFAULT_BATCH = 256


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
            _LAUNCHES[-1].ops.append((f"triton:{name}", 0, sum(Roofline.touched(t) for t in tensors), None))

    return launch


@contextlib.contextmanager
def _fused_kernels_as_on_cuda() -> Iterator[None]:
    """Every module that picks its path by ``kernels.common.use_triton`` (the kernels package, the bf16-moment
    optimizer) takes the Triton path for CPU tensors, launches are recorded, not run, and the fused MLP's weight
    gradients come out of the matmul in float32 as on CUDA (``WIDE_MATMUL_DEVICES``: the fake tensors' meta kernel
    has the overload the CPU build lacks)."""
    import sys

    from triton.runtime.jit import KernelInterface

    from kernels import fused_mlp
    from kernels.common import use_triton

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(KernelInterface, "__getitem__", _record_launch))
        stack.enter_context(mock.patch.object(fused_mlp, "WIDE_MATMUL_DEVICES", ("cpu",)))
        for module in list(sys.modules.values()):
            if getattr(module, "use_triton", None) is use_triton:
                stack.enter_context(mock.patch.object(module, "use_triton", lambda x: True))
        yield


@contextlib.contextmanager
def _recomputed_under(policy: CudaAutocast) -> Iterator[None]:
    """Recomputed blocks (``torch.utils.checkpoint``) rerun under the autocast policy in the backward, as
    non-reentrant checkpointing restores CUDA autocast's state for its rerun; the emulated policy is a mode
    that the backward would otherwise run without."""
    from torch.overrides import _get_current_function_mode_stack

    original = checkpoint.checkpoint

    def wrapped(function, *args, **kwargs):
        def under_policy(*a, **k):
            if any(mode is policy for mode in _get_current_function_mode_stack()):
                return function(*a, **k)
            with policy:
                return function(*a, **k)

        return original(under_policy, *args, **kwargs)

    with mock.patch.object(checkpoint, "checkpoint", wrapped):
        yield


@contextlib.contextmanager
def _kernels_compute_in(policy: CudaAutocast) -> Iterator[None]:
    """The kernels written in torch ops (``kernels.common.compute_dtype``: fused_mlp, convnext_block) pick the
    dtype they compute and keep in from real autocast, which the emulated policy does not switch on: under
    the policy, they see its dtype, as they would see CUDA autocast's."""
    import sys

    def under_policy(x: torch.Tensor) -> torch.dtype:
        return policy.dtype if x.is_floating_point() and x.dtype != torch.float64 else x.dtype

    with contextlib.ExitStack() as stack:
        for name, module in list(sys.modules.items()):
            if (name == "kernels" or name.startswith("kernels.")) and hasattr(module, "compute_dtype"):
                stack.enter_context(mock.patch.object(module, "compute_dtype", under_policy))
        yield


@contextlib.contextmanager
def _weight_copies_tracked_as_tensors() -> Iterator[None]:
    """MemTracker counts and hooks a module's parameters on each forward. Under ``CastWeightsOnce`` the module's
    cast weights are, for the step, bf16 copies in its parameters' places: not leaves, so they take no
    post-accumulate-grad hook, and not parameters but the step's temporaries, which the tracker counts from the op
    that creates them as any other tensor. Its parameter pass sees the leaves only."""
    from torch.distributed._tools.mem_tracker import MemTracker

    original = MemTracker._track_module_params_and_buffers

    def leaves_only(self, module, *args, **kwargs):
        held = {
            m: m._parameters
            for m in module.modules()
            if any(p is not None and not p.is_leaf for p in m._parameters.values())
        }
        for m, parameters in held.items():
            m._parameters = {n: p for n, p in parameters.items() if p is None or p.is_leaf}
        try:
            return original(self, module, *args, **kwargs)
        finally:
            for m, parameters in held.items():
                m._parameters = parameters

    with mock.patch.object(MemTracker, "_track_module_params_and_buffers", leaves_only):
        yield


@contextlib.contextmanager
def _cyclic_garbage_freed_after_each_module_backward() -> Iterator[None]:
    """Tensors that only reference cycles keep alive (FakeTensorMode's and pytree's closures around the recomputed
    activations of a checkpointed block) are freed when Python's cyclic collector next runs, which depends on what
    ran before in the process: a lean ResNet-50's simulated peak at batch 256 came out anywhere in 13.1-15.9 GiB,
    all of it such garbage above its ~5.8 GiB. A real step frees them when its block's backward is done; here a full
    collection runs after each module's backward, over the objects made since the simulation began (the rest
    frozen, so each collection is quick), and the peak is the same whatever ran before."""
    from torch.distributed._tools.mod_tracker import ModTracker

    original = ModTracker._get_pop_fn

    def collecting(self, w_mod, name, is_bw):
        pop = original(self, w_mod, name, is_bw)
        if not is_bw:
            return pop

        def collected(*args):
            gc.collect()
            return pop(*args)

        return collected

    gc.collect()
    gc.freeze()
    try:
        with mock.patch.object(ModTracker, "_get_pop_fn", collecting):
            yield
    finally:
        gc.unfreeze()


def _foreach_like_cuda(params, differentiable, use_fused=False):
    """torch's Adam default on CUDA tensors when not asked for fused (foreach); the CPU default (a loop per tensor)
    needs less memory."""
    return False, not differentiable


# Adam as a simulated step runs it: fused (build_optimizer's choice on CUDA), foreach (torch's own CUDA default, what
# the calibration's published runs predate fused with), per-tensor (the CPU's, for checking against a real CPU step)
ADAM_IMPLEMENTATIONS = ("fused", "foreach", "per-tensor")


@dataclass(frozen=True)
class Simulation:
    """What one fake run of a case measured: all exact except that it is the CPU stand-in of a CUDA run."""

    case: Case
    batch: int
    autocast: bool
    channels_last: bool
    memory: str  # plain | lean (StepOptions.memory)
    optimizer_memory: str  # plain | in-backward | in-backward-bf16 (StepOptions.optimizer_step)
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
    adam: str = "fused",
    memory: str = "plain",
    optimizer_memory: str | None = None,
    fused_blocks: bool = True,
    cast_weights_once: bool = True,
) -> Simulation:
    """Two bench training steps of ``model`` on ``batch`` samples of ``shape`` under FakeTensorMode.

    autocast: the CUDA run's bf16 autocast around the network (``CudaAutocast``); False: fp32 throughout,
    as on a CPU. channels_last: None means bench's GPU default (image models channels-last, latent not).
    kernels: "triton", the fused kernels' CUDA path (launches recorded); "reference", their plain-torch
    CPU path (what a CPU run executes, for checking a simulation against one). adam: one of
    ``ADAM_IMPLEMENTATIONS`` (the in-backward buckets' Adam too; the bf16-moment one has one implementation).
    memory: plain | lean (``StepOptions.memory``: a latent model's lean mode, an image ResNet's residual blocks
    recomputed). optimizer_memory: engine train's --optimizer-memory; None: the memory mode's
    (``OPTIMIZER_MEMORY_OF``: a lean step steps its parameters in the backward, in buckets, with bf16 Adam moments).
    fused_blocks: ``StepOptions.fused_blocks`` (False: a ConvNeXt's blocks as timm's eager modules).
    cast_weights_once: ``StepOptions.cast_weights_once`` (False: autocast casts each weight, and each gradient back).
    """
    if kernels not in ("triton", "reference"):
        raise ValueError(f"kernels={kernels!r}: expected 'triton' (as on CUDA) or 'reference' (as on CPU)")
    if adam not in ADAM_IMPLEMENTATIONS:
        raise ValueError(f"adam={adam!r}: expected one of {', '.join(ADAM_IMPLEMENTATIONS)}")
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    case = _case(model, shape)
    if batch < 1:
        raise ValueError(f"batch {batch}: must be at least 1")
    cl = case.space == "image" if channels_last is None else channels_last
    cpu = torch.device("cpu")
    opts = StepOptions(
        cpu,
        channels_last=cl,
        loss=loss,
        kernels="auto" if kernels == "triton" else "reference",
        memory=memory,
        optimizer_memory=optimizer_memory,
        fused_blocks=fused_blocks,
        cast_weights_once=cast_weights_once,
    )
    with torch.device("meta"):  # weights: shapes (and bench's memory format) only, no values drawn
        net = build_net(case, dataclasses.replace(opts, device=torch.device("meta")))
    policy = CudaAutocast(torch.bfloat16) if autocast else None
    region = (lambda device: policy) if policy is not None else None

    with contextlib.ExitStack() as stack:
        stack.enter_context(FakeTensorMode())
        stack.enter_context(mock.patch.object(train_steps, "TrainingLoss", _HostBuiltLoss))
        if adam == "fused":  # the fake tensors' device is where build_optimizer fuses, as it does on CUDA
            stack.enter_context(mock.patch.object(optimizers, "FUSED_DEVICES", (cpu.type,)))
        elif adam == "foreach":
            stack.enter_context(mock.patch("torch.optim.adam._default_to_fused_or_foreach", _foreach_like_cuda))
        if kernels == "triton":
            stack.enter_context(_fused_kernels_as_on_cuda())
        stack.enter_context(_private_caches())
        stack.enter_context(_weight_copies_tracked_as_tensors())
        if memory == "lean":  # the steps that recompute blocks in the backward
            stack.enter_context(_cyclic_garbage_freed_after_each_module_backward())
        for target in _HOST_CHECKS:
            stack.enter_context(mock.patch(target, lambda *a, **k: None))
        if region is not None:
            stack.enter_context(mock.patch("engine.training.objective.autocast", region))
            stack.enter_context(mock.patch("engine.training.objective.network_input_dtype", lambda d: policy.dtype))
            stack.enter_context(_recomputed_under(policy))
            stack.enter_context(_kernels_compute_in(policy))
        # MemTracker's own post-accumulate-grad hook runs after an in-backward optimizer step has dropped the
        # gradient (which its grad hook counted already) and warns of the None it finds
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", "Expected a tensor or a traceable wrapper-subclass", UserWarning)
        net = net._apply(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=cpu))
        tracker = MemTracker()
        tracker.track_external(net)
        with tracker:
            step, net = make_step(case, batch, opts, net=net)
            step(0)  # creates Adam's state; its gradients live on into the next step's forward
            tracker.reset_mod_stats()
            copies = (weight_casts.COPIES,) if policy is None else (policy.casts, weight_casts.COPIES)
            saved = SavedTensorCounter(list(net.parameters()), copies)
            roofline = Roofline()
            _LAUNCHES.append(roofline)
            try:
                with roofline, flop_counter() as counter, FlopCounterMode(display=False) as stock, saved.counting():
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
        memory=memory,
        optimizer_memory=opts.optimizer_step,
        flops=int(counter.get_total_flops()),
        flops_stock=int(stock.get_total_flops()),
        saved_activation_bytes=saved.activations,
        saved_weight_bytes=saved.parameters,
        peak_bytes=breakdown.get("Total", 0),
        peak_breakdown=breakdown,
        ops=tuple(roofline.ops),
        params=sum(p.numel() for p in net.parameters()),
    )


def against_measured(rows: list[dict], log: Callable[[str], None]) -> list[dict]:
    """The simulation of a CPU run's own equal-batch rows (`bench throughput`'s: fp32, the CPU's kernels and Adam),
    against what they measured: FLOPs (the same counter, so they must agree) and peak memory (simulated storages
    against RSS)."""
    out = []
    for row in (r for r in rows if r["regime"] == "equal batch"):
        try:
            sim = simulate(
                row["model"],
                tuple(row["shape"]),
                row["batch"],
                autocast=False,
                channels_last=row["channels_last"],
                kernels="reference",
                adam="per-tensor",
            )
        except (ValueError, RuntimeError) as err:
            log(f"no simulation of {row['case']}: {err}")
            continue
        out.append(
            {
                "case": row["case"],
                "batch": row["batch"],
                "flops_per_sample": sim.flops / row["batch"],
                "measured_flops_per_sample": row["flops_per_sample"],
                "simulated_peak_bytes": sim.peak_bytes,
                "measured_peak_bytes": row["peak_memory_bytes"],
                "peak_ratio": sim.peak_bytes / row["peak_memory_bytes"] if row["peak_memory_bytes"] else None,
            }
        )
    return out
