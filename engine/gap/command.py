"""`engine gap`'s command line: the plan it describes (stores to encode or given, arms, budget, units), run."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

from engine.errors import UsageError
from engine.gap import arms
from engine.gap.plan import GapPlan, label_of, plan_units
from engine.gap.run import prepare_stores, run_gap
from engine.store import open_store


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
    cuda = device.type == "cuda"
    budget = {
        "epochs": args.epochs or (60 if cuda else 20),
        "batch_size": args.batch_size or (256 if cuda else 64),
        "patience": args.patience or (15 if cuda else 20),
        "loss": args.loss or ("ldam-drw" if cuda else "ce-cb"),
    }
    budget["curve_levels"] = args.curve_levels or (32 if cuda else 8)
    for key in ("lr", "warmup_steps", "noise", "mask_p", "drw_epoch", "clean_eval"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    if args.precondition or not cuda:
        budget["precondition"] = True
    plan = GapPlan(
        out=out,
        stores=stores,
        arms=chosen,
        units=[],
        encode=to_encode,
        device=device,
        budget=budget,
        image_model=args.image_model or ("resnet50" if cuda else "resnet18"),
        latent_model=args.latent_model or ("convnext-t-film" if cuda else "adm-s-film"),
    )
    if to_encode:
        prepare_stores(replace(plan, arms=()), log)
    plan.units = plan_units(open_store(next(iter(stores.values()))), args.folds, args.seeds)
    return plan


def main(args) -> int:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    plan = main_args(args, log=log)
    plan.command = " ".join(["engine", *getattr(args, "argv", ["gap"])])
    report = run_gap(plan, log=log)
    gap_of = {arm.gap.key: arm.gap.title for arm in arms.ARMS if arm.gap}
    for label, ae in report["autoencoders"].items():
        g = ae["gaps"].get("balanced_accuracy", {})
        found = [f"{title} {g[key]['mean']:+.3f}" if g.get(key) else f"{title} -" for key, title in gap_of.items()]
        print(f"{label}: {', '.join(found)} balanced accuracy")
    print(f"results in {plan.out}/gap.md")
    return 0
