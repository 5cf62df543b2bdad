"""Training a gap study's share of runs: one after the other, or ``--parallel N`` at once on one device, every
run an `engine train` run in its own process (small latent runs leave a GPU idle). A run that needs another
(a distilled run its unit's teacher, a graft its image network) starts only once that one has finished and its
logits are stored; the rest start in the plan's order as slots free up. Each run resumes and is reused on its own,
so a killed parallel study resumes as a serial one does."""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch

from engine.errors import UsageError
from engine.gap.arms import Arm
from engine.gap.plan import GapPlan, Unit, teacher_name
from engine.store import open_store
from engine.store.lock import teacher_lock
from engine.teacher import add_teacher_logits
from engine.train import train
from engine.training.config import TrainConfig


def run_one(cfg: TrainConfig, log) -> dict:
    """The run's eval.json: reused when it exists, else trained (resumed when a checkpoint is there)."""
    out = Path(cfg.out)
    if (out / "eval.json").is_file():
        return json.loads((out / "eval.json").read_text())
    cfg = replace(cfg, resume=(out / "last.safetensors").is_file())
    train(cfg, log=lambda *_: None)
    return json.loads((out / "eval.json").read_text())


def run_in_process(cfg: TrainConfig, threads: int | None) -> dict:
    """One run in a worker process of ``--parallel``, on its share of the CPU's threads (None: torch's own)."""
    if threads is not None:
        torch.set_num_threads(threads)
    return run_one(cfg, log=None)


def store_teacher(plan: GapPlan, teacher: str, unit: Unit, log) -> None:
    """The teaching arm's best checkpoint of ``unit`` as teacher logits in every store (once per store). Shards
    add their units' logits to the same stores: each store's additions wait their turn (its teacher lock)."""
    arm = next(arm for arm in plan.arms if arm.name == teacher)
    ckpt = plan.run_dir(arm, plan.first, unit) / "best.safetensors"
    for label, path in plan.stores.items():
        with teacher_lock(Path(path)).acquire(Path(path), wait=True):
            record = open_store(path).manifest.get("teachers", {}).get(teacher_name(unit))
            stale = record is None or (record["checkpoint"], record["sha256"]) != (str(ckpt.resolve()), _sha256(ckpt))
            if stale or "features" not in record:  # logits stored before the features were: both again
                log(f"[{label}] teacher logits {teacher_name(unit)} from {ckpt}")
                add_teacher_logits(path, ckpt, plan.device, name=teacher_name(unit))


def _sha256(path: Path) -> str:
    """A retrained teacher keeps its checkpoint's path: its logits are stale when its bytes changed."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def skipped_because(plan: GapPlan, arm: Arm) -> str | None:
    """Why ``arm`` cannot run in this study (the originals arm it needs is not in --arms), or None."""
    if arm.needs and arm.needs not in {a.name for a in plan.arms}:
        return f"no {arm.needs} arm to {'distil' if arm.teacher else 'graft'} from (add {arm.needs} to --arms)"
    return None


def require_dependencies(plan: GapPlan) -> None:
    """Before any training: every run of this share that needs another finds it finished or in its own share. The
    shards' partition keeps a unit's dependent runs with its originals runs, so only shards that disagree on the
    shard count can part them."""
    share = {plan.run_dir(*run) for run in plan.share()}
    for arm, _, unit in plan.share():
        if arm.needs and not skipped_because(plan, arm):
            needed = plan.originals_run(arm.needs, unit)
            if needed not in share and not (needed / "eval.json").is_file():
                raise UsageError(
                    f"{needed}: not finished, and another shard trains it ({arm.name} {unit.name} of shard "
                    f"{plan.shard[0]}/{plan.shard[1]} needs it); give every shard of the study the same count N "
                    "of --shard i/N (the partition depends on it), or run that shard first"
                )


def train_share(plan: GapPlan, log, parallel: int = 1) -> None:
    """Train (or reuse, or resume) this shard's runs, ``parallel`` at once, dependencies first."""
    require_dependencies(plan)
    todo = []
    for arm, label, unit in plan.share():
        where = f"{'images' if arm.originals else label} {arm.name} {unit.name}"
        if why := skipped_because(plan, arm):
            log(f"{where}: skipped, {why}")
        else:
            todo.append((arm, label, unit, where))
    position = {run[:3]: i for i, run in enumerate(todo, 1)}
    started = time.perf_counter()

    def where(run: tuple) -> str:
        return f"[{position[run[:3]]}/{len(todo)}] {run[3]}"

    def finished(run: tuple, result: dict) -> None:
        test = result["test"]
        log(
            f"{where(run)}: test balanced accuracy {test['balanced_accuracy']:.4f}, AUROC {test['auroc']:.4f} "
            f"({(time.perf_counter() - started) / 60:.1f} min so far)"
        )

    # a CPU's threads shared between the runs at once, so that N runs do not thrash; a GPU's runs keep theirs
    threads = max(1, torch.get_num_threads() // parallel) if plan.device.type == "cpu" else None
    pool = ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) if parallel > 1 else nullcontext()
    pending, running = list(todo), {}
    with pool:
        while pending or running:
            busy = {plan.run_dir(*run[:3]) for run in (*pending, *running.values())}
            for run in list(pending):
                arm, label, unit, _ = run
                if len(running) == parallel:
                    break
                if arm.needs and plan.originals_run(arm.needs, unit) in busy:
                    continue  # its teacher or graft is still to train
                pending.remove(run)
                if arm.teacher:
                    store_teacher(plan, arm.teacher, unit, log)
                cfg = plan.config(arm, label, unit)
                log(f"{where(run)}: {'reused' if (Path(cfg.out) / 'eval.json').is_file() else 'training'} ({cfg.out})")
                if parallel == 1 or (Path(cfg.out) / "eval.json").is_file():
                    finished(run, run_one(cfg, log))  # in this process: nothing to wait for
                    busy.discard(Path(cfg.out))
                    continue
                running[pool.submit(run_in_process, cfg, threads)] = run
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(running.pop(future), future.result())
