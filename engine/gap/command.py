"""`engine gap`'s command line: the plan it describes (stores to encode or given, arms, budget, units), run."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from engine.errors import UsageError
from engine.gap import arms
from engine.gap.plan import EVERY_ARM, GapPlan, label_of, plan_units
from engine.gap.run import prepare_stores, report_gap, require_prepared, run_gap
from engine.store import open_store
from engine.training.options import as_arguments, given_options

# the budget of every arm where no option is given: the paper's on CUDA; reduced on a CPU, where the paper's
# 60 epochs of LDAM-DRW at batch 256 learn nothing in a CPU afternoon (docs/gap.md), with EDM's input scaling
BUDGET = {
    "cuda": {"epochs": 60, "batch_size": 256, "patience": 15, "loss": "ldam-drw", "curve_levels": 32},
    "cpu": {"epochs": 20, "batch_size": 64, "patience": 20, "loss": "ce-cb", "curve_levels": 8, "precondition": True},
}
MODELS = {"cuda": ("resnet50", "convnext-t-film"), "cpu": ("resnet18", "adm-s-film")}  # (image, latent) arms


def budget_help() -> str:
    """The defaults of the every-arm options, per device, for --help."""
    return "; ".join(
        f"on {device}: " + ", ".join(" ".join(as_arguments({k: v})) for k, v in budget.items())
        for device, budget in BUDGET.items()
    )


def main_args(args, log=print) -> GapPlan:
    """The plan of ``engine gap``'s command line: stores to encode (--dataset/--autoencoder) or given (--store)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if bool(args.store) == bool(args.autoencoder):
        raise UsageError(
            "engine gap: give --autoencoder A [--autoencoder B ...] (with --dataset, default the "
            "embedded one) to encode stores, or --store S [--store T ...] for stores already encoded"
        )
    chosen = arms.parse(args.arms)
    out = Path(args.out)
    stores, to_encode = {}, {}
    if args.store:
        for path in args.store:
            s = open_store(path)
            label = label_of(s.manifest["autoencoder"]["spec"])
            stores[label if label not in stores else f"{label}-{len(stores)}"] = Path(path)
    else:
        source_args = {"spec": str(Path(args.dataset).resolve()) if args.dataset else None}
        for spec in args.autoencoder:
            label = label_of(spec)
            stores[label] = out / "stores" / f"{label}.zarr"
            to_encode[label] = (source_args, spec)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every run would join one process group across the ranks
        raise UsageError(
            "engine gap under torchrun: its runs train one process each, not one distributed job; start one "
            "`engine gap ... --shard I/N` per process instead (a SLURM array task each, I = $SLURM_ARRAY_TASK_ID), "
            "after shard 0 has prepared the stores, or --parallel N on one machine"
        )
    shard = parse_shard(args.shard)
    if args.report_only and args.shard:
        raise UsageError("--report-only merges every shard's runs: drop --shard")
    if args.parallel < 1:
        raise UsageError(f"--parallel {args.parallel}: run at least 1 run at once")
    kind = "cuda" if device.type == "cuda" else "cpu"
    budget = {**BUDGET[kind], **given_options(args, EVERY_ARM)}
    image_model, latent_model = MODELS[kind]
    plan = GapPlan(
        out=out,
        stores=stores,
        arms=chosen,
        units=[],
        encode=to_encode,
        device=device,
        budget=budget,
        image_model=args.image_model or image_model,
        latent_model=args.latent_model or latent_model,
        rerun_changed=args.rerun_changed,
        shard=shard,
        views=args.views,
    )
    if to_encode and args.report_only:
        require_prepared(replace(plan, arms=()), "nothing to report: run the study (without --report-only) first")
    elif to_encode and shard[0] > 0:
        require_prepared(replace(plan, arms=()), f"shard 0/{shard[1]} encodes it: run that shard first, then this one")
    elif to_encode:
        prepare_stores(replace(plan, arms=()), log)
    plan.units = plan_units(open_store(next(iter(stores.values()))), args.folds, args.seeds)
    return plan


def parse_shard(text: str | None) -> tuple[int, int]:
    """``--shard i/n``: this process's index among n shards; (0, 1) when not given."""
    if text is None:
        return (0, 1)
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise UsageError(f"--shard {text}: give i/n with 0 <= i < n, e.g. --shard 0/4 (SLURM: $SLURM_ARRAY_TASK_ID/4)")
    return (int(index), int(count))


def main(args) -> int:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    plan = main_args(args, log=log)
    plan.command = " ".join(["engine", *getattr(args, "argv", ["gap"])])
    report = report_gap(plan, log=log) if args.report_only else run_gap(plan, log=log, parallel=args.parallel)
    if report is None:
        print(
            f"shard {plan.shard[0]}/{plan.shard[1]} done; once every shard is, merge them: the same command with "
            "--report-only instead of --shard"
        )
        return 0
    gap_of = {arm.gap.key: arm.gap.title for arm in arms.ARMS if arm.gap}
    for label, ae in report["autoencoders"].items():
        g = ae["gaps"].get("balanced_accuracy", {})
        found = [f"{title} {g[key]['mean']:+.3f}" if g.get(key) else f"{title} -" for key, title in gap_of.items()]
        print(f"{label}: {', '.join(found)} balanced accuracy")
    if report["missing"]:
        print(f"INCOMPLETE: {len(report['missing'])} runs missing (gap.md lists them); the figures are over the rest")
    print(f"results in {plan.out}/gap.html ({plan.out}/gap.md, gap.json)")
    return 0
