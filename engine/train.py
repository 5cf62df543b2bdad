"""`engine train`: setup from the config once, then one readable training loop.

Where things happen, by name: the noise is injected by ``LatentObjective`` (``kernels.add_noise``:
standardise + mask + noise in one pass); FiLM is applied inside the model (``engine.models``: FiLM after
every ConvNeXt stage fused with the next LayerNorm in ``kernels.film_layer_norm``, in every ADM block
fused with GroupNorm + SiLU in ``kernels.group_norm_film_silu``); the loss is ``TrainingLoss`` (the
``--loss`` recipe, with ``Distillation``); checkpoints are written by ``Checkpoints.save``
(``save_checkpoint``, atomic). Every random draw of a step is keyed by (seed, step) and the loader resumes
from one integer, so a killed run continued with ``--resume`` ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from engine.errors import UsageError
from engine.evaluate import evaluate, evaluate_checkpoint
from engine.loaders import LatentLoader, Selection, make_loader, select
from engine.loaders.selection import FEATURES
from engine.models import model_config
from engine.store import LatentStore, StoreError, open_store
from engine.store.integrity import identity
from engine.training.checkpoint import RunState, read_checkpoint, restore_optimizer, save_checkpoint, store_record
from engine.training.config import LrSchedule, TrainConfig
from engine.training.distributed import DistContext, init_distributed
from engine.training.graft import Graft
from engine.training.inputs import default_image_size
from engine.training.objective import TrainingLoss, train_step
from engine.training.optimizers import StepInBackward, build_optimizer
from engine.training.run_dir import RunDir
from engine.training.spaces import space_for
from engine.training.tensorboard import TRAINING_LOGS, NoLog
from engine.training.weight_casts import CastWeightsOnce, applies


def default_out(cfg: TrainConfig) -> Path:
    fold = "" if cfg.fold is None else f"-fold{cfg.fold}"
    return Path("runs") / f"{cfg.space}-{cfg.model}{fold}"


def selection_score(metrics: dict, multilabel: bool) -> float:
    """Early stopping and best-checkpoint criterion: balanced accuracy (paper); macro AUROC for multi-label."""
    return metrics["auroc"] if multilabel else metrics["balanced_accuracy"]


def train(cfg: TrainConfig, log=print) -> dict:
    """Train, evaluate the best checkpoint; returns the run directory, its state and the test metrics."""
    ctx = init_distributed(cfg.device)
    run = RunDir(Path(cfg.out) if cfg.out else default_out(cfg))
    if ctx.is_main:
        run.lock(cfg.resume)  # before any work: a second run into the same --out stops at once
    try:
        return _train(cfg, ctx, run, log if ctx.is_main else (lambda *_: None))
    finally:
        run.release()
        ctx.close()  # once _train's frame, and the DDP model holding the process group with it, is gone


def open_selections(cfg: TrainConfig) -> tuple[LatentStore, dict[str, Selection]]:
    """The store (checked) and its train/val/test selections: stored splits, or fold k's roles."""
    store = open_store(cfg.store)
    sel = {role: select(store, role, cfg.fold, cfg.teacher) for role in ("train", "val", "test")}
    if cfg.distill != "none" and "teacher_logits" not in sel["train"].row_fields:
        raise StoreError(
            f"{store.path}: --distill {cfg.distill} needs teacher logits `{cfg.teacher}`; add them with "
            f"`engine encode --teacher CKPT --teacher-name {cfg.teacher} --out {store.path}`"
        )
    if cfg.feature_distill and "teacher_features" not in sel["train"].row_fields:
        raise StoreError(
            f"{store.path}: --feature-distill needs the teacher features `{cfg.teacher}{FEATURES}` (stored with its "
            f"logits since this engine version); add them with `engine encode --teacher CKPT --teacher-name "
            f"{cfg.teacher} --out {store.path}`"
        )
    if cfg.batch_size > sel["train"].size:
        raise UsageError(
            f"--batch-size {cfg.batch_size} is larger than the training selection ({sel['train'].size} "
            f"samples of {store.path}); pass --batch-size {sel['train'].size} or less"
        )
    return store, sel


def build_loss(cfg: TrainConfig, store: LatentStore, train: Selection, device: torch.device) -> TrainingLoss:
    """The --loss recipe (with --distill), weighted by the training selection's class counts."""
    multilabel, names = store.manifest["dataset"]["multilabel"], store.manifest["dataset"]["class_names"]
    labels = np.asarray(train.labels)
    counts = labels.sum(0) if multilabel else np.bincount(labels, minlength=len(names))
    return TrainingLoss.from_config(cfg, counts, multilabel, device, class_names=names)


@dataclass
class Checkpoints:
    """Writes the run's checkpoints, on the main rank only: weights, optimizer, loader position, state, and
    what the run was trained on (config, model, store)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | StepInBackward
    loader: LatentLoader
    config: dict  # the run's TrainConfig as recorded (to_dict, once)
    manifest: dict
    image_size: int
    main: bool

    def save(self, path: Path, state: RunState) -> None:
        if not self.main:
            return
        save_checkpoint(
            path,
            self.model,
            self.optimizer,
            {
                "state": state.to_dict(),
                "loader": self.loader.state_dict(),
                "config": self.config,
                "model": model_config(self.model),
                "class_names": self.manifest["dataset"]["class_names"],
                "multilabel": self.manifest["dataset"]["multilabel"],
                "image_size": self.image_size,
                "val": state.best_val or None,
                "store": store_record(self.manifest),
            },
        )


def _train(cfg: TrainConfig, ctx: DistContext, run: RunDir, say) -> dict:
    # setup: data, model, objective, optimizer, run directory (or the checkpoint a resume continues from)
    torch.manual_seed(cfg.seed)
    store, sel = open_selections(cfg)
    manifest, multilabel = store.manifest, store.manifest["dataset"]["multilabel"]
    train_loader = make_loader(
        store,
        sel["train"],
        cfg.batch_size,
        ctx.device,
        cfg.loader,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        tail="drop",
        log=say,
    )
    val_loader = make_loader(
        store, sel["val"], cfg.batch_size, ctx.device, cfg.loader, seed=cfg.seed, tail="partial", log=say
    )
    pinned = identity(store.path)  # the store this run trains on, by content: refused if another replaces it
    image_size = cfg.image_size or default_image_size(store)
    loss = build_loss(cfg, store, sel["train"], ctx.device)
    # the network and what it is fed, as --space decides: noised latents, or augmented images (training/spaces.py)
    model, objective, val_input = space_for(cfg.space).training(cfg, store, sel, loss, image_size, ctx.device, say)
    # --graft: the image network's stages, and a latent stem fitted to its features (a resume loads its checkpoint)
    grafted = None
    if cfg.graft and not cfg.resume:
        grafted = Graft(cfg, store, model, image_size, ctx.device).fit(sel["train"], sel["val"], say)
    net = DistributedDataParallel(model) if ctx.world_size > 1 else model
    net = torch.compile(net) if cfg.compile else net
    if applies(cfg.memory, cfg.optimizer_memory, cfg.compile, ctx.world_size):  # autocast's weight casts at once
        net = CastWeightsOnce(net)
    if ctx.world_size > 1 and cfg.optimizer_memory != "plain":
        raise UsageError(
            f"--optimizer-memory {cfg.optimizer_memory} steps each parameter before DDP averages its gradient "
            f"across the {ctx.world_size} ranks; use --optimizer-memory plain with several ranks"
        )
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.optimizer_memory)
    recipe, config = objective.loss.recipe, cfg.to_dict()
    learning_rate = LrSchedule.from_config(cfg, recipe)
    if learning_rate.lr != cfg.lr:
        say(f"learning rate {learning_rate.lr:.3g}: --lr {cfg.lr:g} scaled {cfg.lr_scaling} to batch {cfg.batch_size}")
    state = RunState()
    recorded = (
        run.start(
            {
                "train": config,
                "model": model_config(model),
                "store": manifest,
                "store_identity": pinned,
                **({"graft": grafted} if grafted else {}),  # how far the stem's fit came
            },
            cfg.resume,
        )
        if ctx.is_main
        else None
    )
    curves = TRAINING_LOGS[cfg.log](run.path) if ctx.is_main else NoLog()  # --log tensorboard: a view of the record
    ctx.barrier()
    if cfg.resume:
        if recorded is not None and (diff := cfg.same_run(recorded["train"])):
            raise UsageError(
                f"{run.path}: --resume with other settings ({', '.join(diff)}); resume with the original command"
            )
        if recorded is not None and (changed := store_change(recorded, store.manifest, pinned)):
            raise StoreError(
                f"{store.path}: not the store {run.path} started on ({changed}); resume it on that store "
                "(restore it), or start a new run on this one with another --out"
            )
        weights, optim_tensors, meta = read_checkpoint(run.last)
        model.load_state_dict(weights)
        restore_optimizer(optimizer, optim_tensors, meta)
        train_loader.load_state_dict(meta["loader"])
        state = RunState.from_dict(meta["state"])
        if ctx.is_main:
            run.truncate_metrics(state.step)
        say(f"resumed {run.path} at epoch {state.epoch}, step {state.step}")
    checkpoints = Checkpoints(model, optimizer, train_loader, config, manifest, image_size, ctx.is_main)

    stop = state.bad_epochs >= cfg.patience  # a resumed run that had already stopped early trains no further
    for epoch in range(train_loader.epoch, cfg.epochs if not stop else 0):
        # the epoch's schedule: loss weights (DRW: class-balanced from --drw-epoch) and early stopping
        train_loader.set_epoch(epoch)
        objective.set_epoch(epoch)  # its loss weights (DRW) and, with --views, its choice of views
        if recipe.restarts_patience(epoch):
            state.bad_epochs = 0  # the paper restarts early stopping when re-weighting starts
        net.train()
        t0, seen, rate = time.perf_counter(), 0, 0.0
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch}",
            unit="step",
            file=sys.stderr,
            disable=not ctx.is_main,
            initial=train_loader.state_dict()["consumed"] // max(cfg.batch_size, 1),
        )
        for batch in bar:
            # one step: sigma, noise injection, the FiLM network, the loss, backward, Adam (training/objective.py);
            # every draw of it (levels, noise, mask, dropout) is keyed by (--seed, step)
            step = state.step
            for group in optimizer.param_groups:  # --lr, x0.1 once DRW re-weights, ramped over --warmup-steps
                group["lr"] = learning_rate(epoch, step)
            value = train_step(net, optimizer, objective, batch, step).item()  # the step's one host sync
            if not math.isfinite(value):
                keys = sel["train"].keys[batch.ids.cpu().numpy()][:8].tolist()
                kept = (
                    f"the last good checkpoint is {run.last}"
                    if run.last.is_file()
                    else "no checkpoint was written yet (--checkpoint-every N keeps one within an epoch)"
                )
                raise UsageError(
                    f"non-finite loss at epoch {epoch} step {step} (batch keys {keys}); lower --lr; {kept}"
                )
            # bookkeeping: progress, the metrics log, a checkpoint within the epoch, --max-steps
            state.step = step + 1
            seen += len(batch) * ctx.world_size
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{value:.4f}", samples_s=f"{rate:.0f}")
            if ctx.is_main:
                run.log({"step": state.step, "epoch": epoch, "loss": value, "lr": optimizer.param_groups[0]["lr"]})
                curves.step(state.step, value, optimizer.param_groups[0]["lr"])
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                checkpoints.save(run.last, state)
            if cfg.max_steps is not None and state.step >= cfg.max_steps:
                stop = True
                break
        if stop and train_loader.state_dict()["consumed"]:
            checkpoints.save(run.last, state)
            break
        # validation: keep the best checkpoint, stop early when it stops improving
        val = evaluate(model, val_loader, val_input, manifest["dataset"]["class_names"])
        score = selection_score(val, multilabel)
        state.epoch = epoch + 1
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs, state.best_val = score, epoch, 0, val
        else:
            state.bad_epochs += 1
        if ctx.is_main:
            run.log({"step": state.step, "epoch": epoch, "val": val, "samples_per_s": rate})
            curves.epoch(epoch, val)
        say(
            f"epoch {epoch}: val balanced accuracy {val['balanced_accuracy']:.4f}, "
            f"AUROC {val['auroc']:.4f}{' (best)' if improved else ''}, {rate:.0f} samples/s"
        )
        checkpoints.save(run.last, state)
        if improved:
            checkpoints.save(run.best, state)
        if state.bad_epochs >= cfg.patience or stop:
            say(f"early stopping after epoch {epoch} (no improvement for {cfg.patience} epochs)")
            break

    # the end: ranks agree, the best checkpoint on val and test (and the noise-level curve)
    ctx.barrier()
    result = {"run": str(run.path), "state": state.to_dict()}
    if ctx.world_size > 1:
        result["ranks_in_sync"] = ranks_in_sync(model)
        say(f"ranks in sync: identical weights on {ctx.world_size} ranks")
    if ctx.is_main and run.best.is_file():
        if (now := identity(store.path)) != pinned:
            raise StoreError(
                f"{store.path}: replaced while this run trained on it (content {pinned}, now {now}); the final "
                f"evaluation would read other data. The checkpoints stay in {run.path}: evaluate them with "
                f"`engine eval {run.best} --store STORE` on the store they were trained on"
            )
        result.update(evaluate_checkpoint(run.best, store, run.path, ctx.device, cfg.fold, cfg.loader, log=say))
        curves.noise_curve(result.get("test_by_sigma", {}))
    curves.close()
    return result


SETTINGS = ("dataset", "autoencoder", "image_size", "latent_shape", "logvar", "folds", "splits", "format")


def store_change(recorded: dict, manifest: dict, now: str) -> str | None:
    """What differs between the store a run recorded in its config.json and the one at its path now; None: the same.
    A run recorded before stores were pinned compares the settings alone."""
    before = recorded["store"]
    if before.get("settings_fingerprint") != manifest.get("settings_fingerprint"):
        fields = [key for key in SETTINGS if before.get(key) != manifest.get(key)]
        return f"re-encoded with other {', '.join(fields) or 'settings'}"
    if (pinned := recorded.get("store_identity")) not in (None, now):
        return f"re-encoded with the same settings to other latents: content {pinned}, now {now}"
    return None


def ranks_in_sync(model: torch.nn.Module) -> bool:
    """All ranks hold the same weights (DDP keeps them so; a mismatch is a bug worth a loud error)."""
    import torch.distributed as dist

    probe = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    gathered = [torch.empty_like(probe) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, probe)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("ranks hold different weights after training; DDP lost synchronisation")
    return True
