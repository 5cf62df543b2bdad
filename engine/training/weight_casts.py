"""The network under autocast with the weights autocast casts cast all at once: one multi-tensor copy to the
compute dtype per step, and one for their gradients back, instead of a cast kernel each way per weight.

Under bf16 autocast every fp32 weight a matmul or convolution reads is cast on its first use in a step (autocast
caches the copy), and its gradient is cast back to fp32 on its way to ``.grad``: two small kernels per weight,
most near a kernel's minimum duration. In the plain ConvNeXt-T-FiLM latent step (h200-sxm, batch 256) that is 216
of its 834 ops; at once, 617 ops and 4.28 ms instead of 4.84 (predicted: ``bench.simulated_step`` priced by
``bench.calibrated``).
Here the first step runs under autocast alone while a dispatch mode notes which parameters autocast casts (and
to which dtype) and which are read as they are; from the second step on, the cast ones are copied together
(``torch._foreach_copy_``, one multi-tensor kernel on CUDA, into one flat buffer) and the network is called with
the copies in their place: autocast finds them in its dtype and casts nothing.
Their gradients reach the fp32 parameters through one more ``_foreach_copy_``.

The same values: each copy is the rounding autocast's ``_to_copy`` makes of the same weight, the gradients of a
copy's uses are summed in the copy's dtype (as autograd sums them on autocast's cached copy) and then cast to
fp32 (as the cast's backward does). A parameter that any op of the first forward reads as it is (a norm's fp32
weight, a parameter also read in fp32 elsewhere) is never replaced. What changes is when parameters get their
gradients: all at the end of the backward. That is why the step uses this only where nothing acts on a
parameter's gradient as soon as it is ready (``applies``): no per-parameter optimizer step in the backward
(``--optimizer-memory``), no DDP all-reduce overlapping it, and the plain memory mode, whose autograd functions
cast no weight themselves (the lean ones cast and sum gradients in fp32 inside, which a bf16 copy would round).
The Triton kernels read what they are handed without a dispatch the recorder sees: none of them takes a
parameter that autocast also casts (the fused ConvNeXt block's fc1 bias and layer scale, the norms' weights stay
fp32); ``tests/test_weight_casts.py`` checks every latent model's gradients bit for bit on both kernel paths.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

_LOWER = (torch.bfloat16, torch.float16)
# The storages of the copies alive now (weakly held): weights, not activations, to a counter of what autograd saves
# (bench.saved_activations), as autocast's own copies are.
COPIES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def applies(memory: str, optimizer_step: str, compiled: bool, ranks: int) -> bool:
    """Whether a step casts its weights at once (see the module's docstring for why each condition)."""
    return memory == "plain" and optimizer_step == "plain" and not compiled and ranks == 1


class _CastRecorder(TorchDispatchMode):
    """Which parameters a forward casts to a lower-precision dtype, and which it reads as they are."""

    def __init__(self, parameters: dict[str, nn.Parameter]):
        super().__init__()
        self.names = {id(p): name for name, p in parameters.items() if p.requires_grad}
        self.cast: dict[str, torch.dtype] = {}
        self.read: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and id(args[0]) in self.names and out.dtype in _LOWER:
            self.cast.setdefault(self.names[id(args[0])], out.dtype)
            return out
        if func.namespace == "prim":  # metadata (a fake tensor's device), not a read of the values
            return out
        for a in (*args, *(kwargs or {}).values()):
            for t in a if isinstance(a, (list, tuple)) else (a,):
                if isinstance(t, torch.Tensor) and id(t) in self.names:
                    self.read.add(self.names[id(t)])
        return out

    def replaced(self) -> dict[str, torch.dtype]:
        return {name: dtype for name, dtype in self.cast.items() if name not in self.read}


def _dense_strides(t: torch.Tensor) -> tuple[int, ...]:
    """t's strides where they lay it out densely (row-major or channels-last), else row-major ones."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t.stride()
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.insert(0, step)
        step *= max(size, 1)
    return tuple(strides)


def _flat_views(specs: list[tuple[torch.Size, tuple[int, ...]]], dtype, device) -> list[torch.Tensor]:
    """Views of one new buffer in ``dtype``, one per (shape, strides): one allocation however many tensors."""
    sizes = [s.numel() for s, _ in specs]
    flat = torch.empty(sum(sizes), dtype=dtype, device=device)
    views, offset = [], 0
    for (shape, strides), size in zip(specs, sizes):
        views.append(flat.as_strided(shape, strides, offset))
        offset += size
    return views


class _CastAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dtype, *params):
        specs = [(p.shape, _dense_strides(p)) for p in params]
        ctx.specs, ctx.dtype, ctx.device = specs, params[0].dtype, params[0].device
        ctx.set_materialize_grads(False)
        copies = _flat_views(specs, dtype, params[0].device)
        COPIES[copies[0].untyped_storage()] = True
        torch._foreach_copy_(copies, list(params))
        return tuple(copies)

    @staticmethod
    def backward(ctx, *grads):
        given = [i for i, g in enumerate(grads) if g is not None]
        out: list[torch.Tensor | None] = [None] * len(grads)
        if given:
            views = _flat_views([ctx.specs[i] for i in given], ctx.dtype, ctx.device)
            torch._foreach_copy_(views, [grads[i] for i in given])
            for i, view in zip(given, views):
                out[i] = view
        return (None, *out)


class CastWeightsOnce(nn.Module):
    """``module`` called under autocast with its cast weights copied at once (the module's docstring says how).

    Wraps the network the step calls (``unwrapped`` finds ``module``); the model itself, its parameter names and
    its checkpoints are unchanged. Outside autograd (evaluation), or before the first training call has shown which
    weights autocast casts, it calls ``module`` as it is.

    The copies take the parameters' places in their modules' parameter dicts for the call, every place a parameter
    is registered (a tied one in each), and the parameters are put back after it. Not ``functional_call``: its
    per-call bookkeeping costs ~0.6 ms of host time for 156 of ConvNeXt-T's tensors on a 2-core CPU against
    ~0.08 ms for the swap, and an eager step's host time is what a small latent step is bound by.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.casts: dict[str, torch.dtype] | None = None  # parameter name -> dtype, once a first forward showed them
        self._replaced: list[nn.Parameter] = []
        self._slots: list[tuple[nn.Module, str, int]] = []  # (module, attribute, index into _replaced)

    def forward(self, *inputs):
        if not torch.is_grad_enabled():
            return self.module(*inputs)
        if self.casts is None:
            return self._recorded(*inputs)
        if not self.casts:
            return self.module(*inputs)
        if any(module._parameters.get(name) is not self._replaced[i] for module, name, i in self._slots):
            return self._recorded(*inputs)  # a parameter was replaced (load_state_dict(assign=True)): look again
        (dtype,) = set(self.casts.values())  # autocast's one dtype
        copies = _CastAll.apply(dtype, *self._replaced)
        for module, name, i in self._slots:
            module._parameters[name] = copies[i]
        try:
            return self.module(*inputs)
        finally:
            for module, name, i in self._slots:
                module._parameters[name] = self._replaced[i]

    def _recorded(self, *inputs):
        """The call under autocast alone, noting which parameters it casts and where they are registered."""
        parameters = dict(self.module.named_parameters())
        recorder = _CastRecorder(parameters)
        with recorder:
            out = self.module(*inputs)
        self.casts = recorder.replaced()
        self._replaced = [parameters[name] for name in self.casts]
        index = {id(p): i for i, p in enumerate(self._replaced)}
        self._slots = [
            (module, name, index[id(p)])
            for module in self.module.modules()
            for name, p in module._parameters.items()
            if p is not None and id(p) in index
        ]
        return out
