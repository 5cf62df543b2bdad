"""`engine train`: one readable training loop for latent (and image-space) classifiers.

Every random draw of a step (noise levels, Philox stream, mask, augmentation, stochastic depth) is
keyed by (seed, step), and the loader resumes from one integer, so a killed run continued with
``--resume`` ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from engine.checkpoint import read_checkpoint, restore_optimizer, save_checkpoint, store_record
from engine.distributed import init_distributed
from engine.errors import UsageError
from engine.evaluate import CLEAN_LEVEL, evaluate, evaluate_checkpoint, latent_input
from engine.image_space import ImageCache, default_image_size
from engine.loaders import make_loader, select
from engine.objective import TrainingLoss
from engine.models import build_model, load_pretrained, model_config
from engine.noise_injection import NoiseInjector
from engine.run_dir import RunDir
from engine.store import StoreError, open_store
from engine.train_config import TrainConfig


def default_out(cfg: TrainConfig) -> Path:
    fold = "" if cfg.fold is None else f"-fold{cfg.fold}"
    return Path("runs") / f"{cfg.space}-{cfg.model}{fold}"


def selection_score(metrics: dict, multilabel: bool) -> float:
    """Early stopping and best-checkpoint criterion: balanced accuracy (paper); macro AUROC for multi-label."""
    return metrics["auroc"] if multilabel else metrics["balanced_accuracy"]


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: TrainingLoss, x: torch.Tensor,
               c_noise: torch.Tensor | None, batch) -> torch.Tensor:
    """Forward (bf16 autocast on CUDA), loss, backward, optimizer step, with no host sync.

    `bench throughput` times this very function. The caller checks the returned loss.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        logits = net(x, c_noise)
    loss = loss_fn(logits.float(), batch.labels, batch.valid, batch.teacher_logits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train(cfg: TrainConfig, log=print) -> dict:
    ctx = init_distributed(cfg.device)
    run = RunDir(Path(cfg.out) if cfg.out else default_out(cfg))
    if ctx.is_main:
        run.lock(cfg.resume)  # before any work: a second run into the same --out stops at once
    try:
        return _train(cfg, ctx, run, log)
    finally:
        run.release()


def _train(cfg: TrainConfig, ctx, run: RunDir, log) -> dict:
    torch.manual_seed(cfg.seed)
    store = open_store(cfg.store)
    manifest = store.manifest
    multilabel = manifest["dataset"]["multilabel"]
    class_names = manifest["dataset"]["class_names"]
    c, h, _ = manifest["latent_shape"]
    sel = {role: select(store, role, cfg.fold) for role in ("train", "val", "test")}
    if cfg.distill != "none" and "teacher_logits" not in sel["train"].row_fields:
        raise StoreError(f"{store.path}: --distill {cfg.distill} needs teacher logits; add them with "
                         f"`engine encode --teacher CKPT --out {store.path}`")
    if cfg.batch_size > sel["train"].size:
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the training selection ({sel['train'].size} "
                         f"samples of {store.path}); pass --batch-size {sel['train'].size} or less")
    say = log if ctx.is_main else (lambda *_: None)
    train_loader = make_loader(store, sel["train"], cfg.batch_size, ctx.device, cfg.loader, seed=cfg.seed,
                               rank=ctx.rank, world_size=ctx.world_size, tail="drop", log=say)
    val_loader = make_loader(store, sel["val"], cfg.batch_size, ctx.device, cfg.loader, seed=cfg.seed,
                             tail="partial", log=say)

    image_size = cfg.image_size or default_image_size(store)
    if cfg.space == "latent":
        model = build_model(cfg.model, c, len(class_names), latent_size=h)
        stats = manifest["channel_stats"]
        injector = NoiseInjector(cfg.noise, stats["mean"], stats["std"], ctx.device, cfg.mask_p, cfg.target_std, cfg.seed,
                                 cfg.precondition)

        def train_input(batch, step):
            x, c_noise = injector.train_input(batch.latents, step)
            return x.float(), c_noise if cfg.noise_conditioned else None

        val_input = latent_input(injector, CLEAN_LEVEL, cfg.noise_conditioned)
    else:
        model = build_model(cfg.model, 3, len(class_names))
        caches = {role: ImageCache(store, sel[role], image_size, ctx.device) for role in ("train", "val")}

        def train_input(batch, step):
            return caches["train"].batch(batch.ids, augment_seed=cfg.seed * 1_000_003 + step), None

        def val_input(batch):
            return caches["val"].batch(batch.ids), None
    if cfg.init:
        loaded = load_pretrained(model, cfg.init)
        say(f"init from {cfg.init}: {len(loaded.loaded)} tensors loaded, {len(loaded.reinitialised)} kept fresh")
    model.to(ctx.device)
    net = DistributedDataParallel(model) if ctx.world_size > 1 else model
    if cfg.compile:
        net = torch.compile(net)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    class_counts = np.asarray(sel["train"].labels)
    class_counts = class_counts.sum(0) if multilabel else np.bincount(class_counts, minlength=len(class_names))
    loss_fn = TrainingLoss(cfg.loss, class_counts, multilabel, cfg.distill, cfg.distill_alpha, cfg.temperature,
                           cfg.drw_epoch, ctx.device)

    state = {"epoch": 0, "step": 0, "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0}
    recorded = run.start({"train": cfg.to_dict(), "model": model_config(model), "store": manifest}, cfg.resume) \
        if ctx.is_main else None
    ctx.barrier()
    if cfg.resume:
        if recorded is not None and (diff := cfg.same_run(recorded["train"])):
            raise UsageError(f"{run.path}: --resume with other settings ({', '.join(diff)}); resume with the original command")
        weights, optim_tensors, meta = read_checkpoint(run.last)
        model.load_state_dict(weights)
        restore_optimizer(optimizer, optim_tensors, meta)
        train_loader.load_state_dict(meta["loader"])
        state = meta["state"]
        if ctx.is_main:
            run.truncate_metrics(state["step"])
        say(f"resumed {run.path} at epoch {state['epoch']}, step {state['step']}")

    def checkpoint(path: Path) -> None:
        if ctx.is_main:
            save_checkpoint(path, model, optimizer, {"state": state, "loader": train_loader.state_dict(),
                                                      "config": cfg.to_dict(), "model": model_config(model),
                                                      "class_names": class_names, "multilabel": multilabel,
                                                      "image_size": image_size, "val": state.get("best_val"),
                                                      "store": store_record(manifest)})

    stop = False
    for epoch in range(train_loader.epoch, cfg.epochs):
        train_loader.set_epoch(epoch)
        loss_fn.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * loss_fn.lr_factor
        if epoch == cfg.drw_epoch and cfg.loss == "ldam-drw":
            state["bad_epochs"] = 0  # the paper resets early stopping when re-weighting starts
        net.train()
        t0, seen, rate = time.perf_counter(), 0, 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch}", unit="step", file=sys.stderr, disable=not ctx.is_main,
                   initial=train_loader.state_dict()["consumed"] // max(cfg.batch_size, 1))
        for batch in bar:
            step = state["step"]
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # stochastic depth and dropout, keyed by step
            x, c_noise = train_input(batch, step)
            loss = train_step(net, optimizer, loss_fn, x, c_noise, batch)
            value = loss.item()  # the step's one host sync: finiteness, progress bar and log
            if not math.isfinite(value):
                keys = sel["train"].keys[batch.ids.cpu().numpy()][:8].tolist()
                kept = (f"the last good checkpoint is {run.last}" if run.last.is_file() else
                        "no checkpoint was written yet (--checkpoint-every N keeps one within an epoch)")
                raise UsageError(f"non-finite loss at epoch {epoch} step {step} (batch keys {keys}); lower --lr; {kept}")
            state["step"] = step + 1
            seen += len(batch) * ctx.world_size
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{value:.4f}", samples_s=f"{rate:.0f}")
            if ctx.is_main:
                run.log({"step": state["step"], "epoch": epoch, "loss": value, "lr": optimizer.param_groups[0]["lr"]})
            if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                checkpoint(run.last)
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                stop = True
                break
        if stop and train_loader.state_dict()["consumed"]:
            checkpoint(run.last)
            break
        val = evaluate(model, val_loader, val_input, class_names)
        score = selection_score(val, multilabel)
        state["epoch"] = epoch + 1
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0, best_val=val)
        else:
            state["bad_epochs"] += 1
        if ctx.is_main:
            run.log({"step": state["step"], "epoch": epoch, "val": val, "samples_per_s": rate})
            say(f"epoch {epoch}: val balanced accuracy {val['balanced_accuracy']:.4f}, "
                f"AUROC {val['auroc']:.4f}{' (best)' if improved else ''}, {rate:.0f} samples/s")
        checkpoint(run.last)
        if improved:
            checkpoint(run.best)
        if state["bad_epochs"] >= cfg.patience or stop:
            say(f"early stopping after epoch {epoch} (no improvement for {cfg.patience} epochs)")
            break
    ctx.barrier()
    result = {"run": str(run.path), "state": state}
    if ctx.world_size > 1:
        result["ranks_in_sync"] = ranks_in_sync(model)
        say(f"ranks in sync: identical weights on {ctx.world_size} ranks")
    if ctx.is_main and run.best.is_file():
        result.update(evaluate_checkpoint(run.best, cfg.store, run.path, ctx.device, cfg.fold, cfg.loader, log=say))
    ctx.close()
    return result


def ranks_in_sync(model: torch.nn.Module) -> bool:
    """All ranks hold the same weights (DDP keeps them so; a mismatch is a bug worth a loud error)."""
    import torch.distributed as dist

    probe = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    gathered = [torch.empty_like(probe) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, probe)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("ranks hold different weights after training; DDP lost synchronisation")
    return True
