"""Where a latent step's time goes, from torch.profiler: noise injection, FiLM + norm layers, the rest of
the model (and loss), the optimizer.

Each profiled op's self time (device time of the kernels it launched on GPU; CPU time on CPU, coarse) goes
to the first category whose pattern matches the op's name or any enclosing op's name. Norm modules are
wrapped in a record_function by forward hooks, so their forward is found whatever kernels run inside; in
backward only the names say it (the fused kernels' autograd nodes, native layer/group norm backward,
Inductor's fused kernel names): elementwise FiLM backward of the reference path counts as "model".
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from engine.training.objective import NOISE_LABEL

NORM_LABEL = "bench:film_norm"
CATEGORIES = (  # first match wins
    ("noise_injection", re.compile(rf"{NOISE_LABEL}|add_noise|AddNoise", re.I)),
    ("optimizer", re.compile(r"Optimizer\.step|Optimizer\.zero_grad|adam|multi_tensor_apply", re.I)),
    ("film_norm", re.compile(rf"{NORM_LABEL}|film|layer_norm|group_norm|LayerNorm|GroupNorm", re.I)),
)


def label_norm_layers(net: torch.nn.Module) -> Callable[[], None]:
    """Wrap every LayerNorm/GroupNorm module's forward (FiLM runs inside them) in a record_function; returns undo."""
    handles = []
    for module in net.modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):

            def pre(m, args):
                m._bench_range = record_function(NORM_LABEL)
                m._bench_range.__enter__()

            def post(m, args, out):
                m._bench_range.__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return lambda: [h.remove() for h in handles]


def categorise(names: list[str]) -> str:
    for category, pattern in CATEGORIES:
        if any(pattern.search(n) for n in names):
            return category
    return "model"


def profile_steps(step: Callable[[int], torch.Tensor], device: torch.device, steps: int = 5, first: int = 1000) -> dict:
    """Shares of self time per category over ``steps`` steps (already warmed up), and the top ops."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for i in range(first, first + steps):
            step(i)
        if cuda:
            torch.cuda.synchronize(device)
    totals: dict[str, float] = {"noise_injection": 0.0, "film_norm": 0.0, "model": 0.0, "optimizer": 0.0}
    by_op: dict[str, float] = {}
    for event in prof.events():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us <= 0:
            continue
        chain, parent = [event.name], event.cpu_parent
        while parent is not None:
            chain.append(parent.name)
            parent = parent.cpu_parent
        if cuda:
            chain += [k.name for k in event.kernels]
        totals[categorise(chain)] += us
        by_op[event.name] = by_op.get(event.name, 0.0) + us
    total = sum(totals.values()) or 1.0
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
    return {
        "time": "self device (kernel) time" if cuda else "self CPU time (coarse: CPU ops, not kernels)",
        "steps": steps,
        "total_ms_per_step": total / 1e3 / steps,
        "shares": {k: v / total for k, v in totals.items()},
        "top_ops": [{"op": name, "ms_per_step": us / 1e3 / steps} for name, us in top],
    }
