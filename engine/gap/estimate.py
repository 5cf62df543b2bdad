"""How long the runs still to do of a gap study take, and how much memory, before they start."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from engine.gap.plan import GapPlan
from engine.loaders import make_loader
from engine.store import open_store
from engine.train import build_loss, open_selections
from engine.training.config import TrainConfig
from engine.training.inputs import default_image_size
from engine.training.objective import train_step
from engine.training.spaces import space_for

PROBE_BATCH = 16  # samples of the timed steps, scaled to the run's batch


def step_seconds(cfg: TrainConfig, device: torch.device) -> tuple[float, int]:
    """Seconds per training step of the run ``cfg`` and its parameter count: `engine train`'s network, objective
    and ``train_step`` on the run's first batch of up to 16 samples, the second of two steps scaled to its batch.
    Timed without distillation (its teacher logits may not exist yet; an MSE on logits costs nothing beside the
    network). Every run seeds itself when it starts, so the draws made here change no result."""
    probe = replace(cfg, batch_size=min(cfg.batch_size, PROBE_BATCH), distill="none", feature_distill=0.0)
    store, sel = open_selections(probe)
    loss = build_loss(probe, store, sel["train"], device)
    image_size = probe.image_size or default_image_size(store)
    net, objective, _ = space_for(probe.space).training(probe, store, sel, loss, image_size, device, lambda *_: None)
    optimizer = torch.optim.Adam(net.parameters(), lr=probe.lr)  # the paper's, and every gap run's
    loader = make_loader(
        store, sel["train"], probe.batch_size, device, probe.loader, seed=probe.seed, log=lambda *_: None
    )
    batch = next(iter(loader))
    loader.close()  # its prefetch, if any: one batch is all the timing needs
    times = []
    for step in range(2):
        t = time.perf_counter()
        train_step(net, optimizer, objective, batch, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return times[-1] * cfg.batch_size / probe.batch_size, sum(p.numel() for p in net.parameters())


def estimate(plan: GapPlan, log) -> dict:
    """Minutes and peak bytes of the runs still to do (this shard's), from timed training steps of each model on
    its input."""
    first = open_store(next(iter(plan.stores.values())))
    m = first.manifest
    rows = sum(m["splits"][s]["valid"] for s in m["splits"])
    n_train = rows * 3 / 5 if plan.units[0].fold is not None else m["splits"]["train"]["valid"]
    budget = TrainConfig(store="", **plan.budget)  # what every run gets, with engine train's defaults
    batch, epochs = budget.batch_size, budget.epochs
    todo = [plan.config(*run) for run in plan.share()]
    todo = [cfg for cfg in todo if not (Path(cfg.out) / "eval.json").is_file()]
    step_s, params, per_run = {}, {}, []
    for cfg in todo:
        store = open_store(cfg.store)  # a step's cost is its network on its input: images time once for every store
        key = (cfg.space, cfg.model, space_for(cfg.space).input_shape(store.manifest, default_image_size(store)))
        if key not in step_s:
            step_s[key], params[key] = step_seconds(cfg, plan.device)
        per_run.append(step_s[key])
    minutes = sum(per_run) * epochs * max(n_train // batch, 1) / 60
    # weights, gradients and Adam's two moments in fp32, and the uint8 image cache of an image arm
    peak = 16 * max(params.values(), default=0) + rows * 3 * default_image_size(first) ** 2
    log(
        f"estimate: {len(todo)} of {len(plan.share())} runs to do, at most {epochs} epochs each: about {minutes:.0f} "
        f"min of training on {plan.device} (timed steps, without early stopping or evaluation); peak memory about "
        f"{peak / 2**30:.2f} GiB"
    )
    return {"runs_to_do": len(todo), "training_minutes_at_most": minutes, "peak_bytes": int(peak)}
