"""`engine gap`: the learnability gap of one or more autoencoders, measured in one resumable command.

Per autoencoder, with one budget and one set of run units (cross-validation folds and/or seeds), it
trains and evaluates the arms

- ``image``: the image classifier on the originals (shared by every autoencoder: trained once per unit),
- ``recon``: the same classifier on the autoencoder's reconstructions D(z), decoded once into the store,
- ``latent``: the noise-conditioned FiLM latent classifier,
- ``latent-plain``: the same latent classifier without noise conditioning,
- ``latent-distill``: ``latent`` distilled from the image arm's stored logits of the same unit (the paper's
  0.5 * classification + 0.5 * MSE on logits),

then reports each arm's test metrics, the fidelity gap (image - recon) and the learnability gap (recon -
latent) with their paired tests, what noise conditioning and distillation recover, and diagnostics that need
no classifier (reconstruction PSNR/SSIM, a linear probe, channel statistics, PCA participation ratio), with
the latent arm's accuracy against the noise level. Every run is an `engine train` run in DIR/runs: a killed
gap reuses the finished runs (their eval.json) and resumes the unfinished ones (--resume).
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from engine.autoencoders import load_autoencoder
from engine.encode import EncodeOptions, encode
from engine.environment import device_name, versions
from engine.errors import UsageError
from engine.metrics.gap_report import write_report
from engine.metrics.gap_stats import gaps, spread
from engine.metrics.latent_diagnostics import latent_diagnostics
from engine.models import build_model, plain_variant
from engine.reconstruct import add_reconstructions
from engine.sources import open_source
from engine.store import LatentStore, open_store
from engine.store.manifest import write_json_atomic
from engine.teacher import add_teacher_logits
from engine.train import train
from engine.training.config import TrainConfig
from engine.training.inputs import default_image_size

SCHEMA = "latent-engine/gap/1"
ARMS = ("image", "recon", "latent", "latent-plain", "latent-distill")
METRICS = ("balanced_accuracy", "auroc", "mcc")
MEDMNIST = ("medmnist_acc", "medmnist_auc")
PAPER = {  # the paper's protocol, as its public code runs it (see ../shared/PAPER.md)
    "image_model": "resnet50",
    "image_size": 256,
    "latent_model": "convnext-t-film",
    "loss": "ldam-drw",
    "batch_size": 256,
    "epochs": 60,
    "patience": 15,
    "lr": "1e-4 (5e-4 distilling)",
    "folds": "5 (all)",
    "autoencoder_input": "512 px",
    "clean_evaluation": "no noise, c_noise of sigma 1e-5",
}


@dataclass(frozen=True)
class Unit:
    """One run of every arm: a cross-validation fold (None: the stored splits) and a seed."""

    fold: int | None
    seed: int

    @property
    def name(self) -> str:
        return ("split" if self.fold is None else f"fold{self.fold}") + f"-seed{self.seed}"


@dataclass
class GapPlan:
    out: Path
    stores: dict[str, Path]  # autoencoder label -> its store
    arms: tuple[str, ...]
    units: list[Unit]
    image_model: str
    latent_model: str
    budget: dict  # TrainConfig fields every arm gets (epochs, batch_size, patience, loss, ...)
    device: torch.device
    encode: dict = field(default_factory=dict)  # label -> (source args, autoencoder spec), for stores to encode
    command: str = "engine gap"  # the command line, as the report records it

    def config(self, arm: str, label: str, unit: Unit) -> TrainConfig:
        """The `engine train` run of ``arm`` for ``unit`` on autoencoder ``label``'s store."""
        first = next(iter(self.stores))
        store, space, model = self.stores[label], "latent", self.latent_model
        if arm in ("image", "recon"):
            space, model = arm, self.image_model
            store = self.stores[first] if arm == "image" else store
        if arm == "latent-plain":
            model = plain_variant(self.latent_model)
        extra = {"distill": "mse", "teacher": teacher_name(unit)} if arm == "latent-distill" else {}
        return TrainConfig(
            store=str(store),
            out=str(self.run_dir(arm, label, unit)),
            space=space,
            model=model,
            fold=unit.fold,
            seed=unit.seed,
            device=str(self.device),
            **self.budget,
            **extra,
        )

    def run_dir(self, arm: str, label: str, unit: Unit) -> Path:
        return self.out / "runs" / ("image" if arm == "image" else label) / arm / unit.name

    def runs(self) -> list[tuple[str, str, Unit]]:
        """(arm, autoencoder label, unit) in the order they run: the image arm first (its logits teach)."""
        out = [("image", next(iter(self.stores)), u) for u in self.units] if "image" in self.arms else []
        return out + [
            (arm, label, u) for label in self.stores for u in self.units for arm in self.arms if arm != "image"
        ]


def teacher_name(unit: Unit) -> str:
    """The stored logits of the image arm of ``unit``, in every store."""
    return f"teacher_{unit.name}".replace("-", "_")


def label_of(spec: str) -> str:
    """A directory-safe name for an autoencoder spec (a family stays its name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec).name if "/" in spec else spec).strip("_") or "autoencoder"


def plan_units(store: LatentStore, folds: str | None, seeds: int) -> list[Unit]:
    """``--folds K|all`` (the store's first K folds, or all) times ``--seeds N``; no --folds: the stored splits."""
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: run at least one seed")
    if folds is None:
        return [Unit(None, s) for s in range(seeds)]
    n = int(store.manifest["folds"]["n_folds"])
    k = n if folds == "all" else int(folds) if folds.isdigit() else -1
    if not 1 <= k <= n:
        raise UsageError(f"--folds {folds}: give a number of folds in 1..{n} (the store's) or 'all'")
    return [Unit(f, s) for f in range(k) for s in range(seeds)]


def differs_from_paper(plan: GapPlan, image_size: int, fold_protocol: str) -> list[str]:
    """The settings of this study that are not the paper's, one line each."""
    b, out = plan.budget, []
    given = {
        "image_model": plan.image_model,
        "image_size": image_size,
        "latent_model": plan.latent_model,
        "loss": b.get("loss", "ldam-drw"),
        "batch_size": b.get("batch_size", 256),
        "epochs": b.get("epochs", 60),
        "patience": b.get("patience", 15),
    }
    out += [f"{k}: {v} (paper: {PAPER[k]})" for k, v in given.items() if v != PAPER[k]]
    if "lr" in b:
        out.append(f"lr: {b['lr']} for every arm (paper: {PAPER['lr']})")
    folds = {u.fold for u in plan.units}
    if folds == {None}:
        out.append(
            f"units: the stored train/val/test splits, {len(plan.units)} seed(s) (paper: {PAPER['folds']} folds)"
        )
    elif len(folds) < 5:
        out.append(f"folds: {len(folds)} (paper: {PAPER['folds']})")
    if folds != {None} and fold_protocol != "paper":
        out.append(
            "fold assignment: the engine's (splits pooled, grouped by patient), not the reference code's "
            "(encode a folder + CSV with --folds-like paper)"
        )
    for key in ("precondition", "warmup_steps", "noise", "mask_p", "drw_epoch"):
        if key in b:
            out.append(f"{key}: {b[key]} (paper: {TrainConfig(store='').__dict__[key]})")
    if b.get("clean_eval", "lowest") == "lowest":
        out.append(f"clean evaluation: at the lowest trained level, sigma 0.002 (paper: {PAPER['clean_evaluation']})")
    return out


def estimate(plan: GapPlan, log) -> dict:
    """Minutes and peak bytes of the runs still to do, from two timed training steps of each model on its input."""
    first = open_store(next(iter(plan.stores.values())))
    m = first.manifest
    rows = sum(m["splits"][s]["valid"] for s in m["splits"])
    n_train = rows * 3 / 5 if plan.units[0].fold is not None else m["splits"]["train"]["valid"]
    batch, epochs = plan.budget.get("batch_size", 256), plan.budget.get("epochs", 60)
    todo = [plan.config(*run) for run in plan.runs()]
    todo = [cfg for cfg in todo if not (Path(cfg.out) / "eval.json").is_file()]
    step_s, params, per_run = {}, {}, []
    for cfg in todo:
        store = open_store(cfg.store)
        side = default_image_size(store)
        key = (cfg.model, tuple(store.manifest["latent_shape"]) if cfg.space == "latent" else (3, side, side))
        if key not in step_s:
            classes = len(m["dataset"]["class_names"])
            step_s[key], params[key] = _time_steps(*key, classes, batch, plan.device)
        per_run.append(step_s[key])
    minutes = sum(per_run) * epochs * max(n_train // batch, 1) / 60
    # weights, gradients and Adam's two moments in fp32, and the uint8 image cache of an image arm
    peak = 16 * max(params.values(), default=0) + rows * 3 * default_image_size(first) ** 2
    log(
        f"estimate: {len(todo)} of {len(plan.runs())} runs to do, at most {epochs} epochs each: about {minutes:.0f} "
        f"min of training on {plan.device} (timed steps, without early stopping or evaluation); peak memory about "
        f"{peak / 2**30:.2f} GiB"
    )
    return {"runs_to_do": len(todo), "training_minutes_at_most": minutes, "peak_bytes": int(peak)}


def _time_steps(
    model: str, shape: tuple[int, ...], classes: int, batch: int, device: torch.device
) -> tuple[float, int]:
    """Seconds per training step of ``model`` on random input (the second of two steps at up to 16 samples,
    scaled to ``batch``), and its parameter count."""
    probe = min(batch, 16)
    with torch.random.fork_rng(devices=[]):
        net = build_model(model, shape[0], classes, latent_size=shape[1]).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = torch.randn(probe, *shape, device=device)
        y = torch.randint(0, classes, (probe,), device=device)
        c = torch.zeros(probe, device=device) if net.noise_conditioned else None
        times = []
        for _ in range(2):
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(x, c), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
    return times[-1] * batch / probe, sum(p.numel() for p in net.parameters())


def prepare_stores(plan: GapPlan, log) -> None:
    """Encode the stores to encode (resumable), decode their reconstructions when the recon arm runs."""
    for label, (source_args, spec) in plan.encode.items():
        source = open_source(**source_args)
        ae = load_autoencoder(spec, device=plan.device)
        size = source.native_size
        log(f"[{label}] store {plan.stores[label]}: encode {spec} at {size} px")
        encode(source, ae, EncodeOptions(out=plan.stores[label], image_size=size, source_args=source_args), log=log)
    if "recon" in plan.arms:
        for label, path in plan.stores.items():
            if not (open_store(path).manifest.get("reconstructions") or {}).get("complete"):
                log(f"[{label}] reconstructions of {path}")
                add_reconstructions(path, plan.device, log=log)


def run_one(cfg: TrainConfig, log) -> dict:
    """The run's eval.json: reused when it exists, else trained (resumed when a checkpoint is there)."""
    out = Path(cfg.out)
    if (out / "eval.json").is_file():
        return json.loads((out / "eval.json").read_text())
    cfg = replace(cfg, resume=(out / "last.safetensors").is_file())
    train(cfg, log=lambda *_: None)
    return json.loads((out / "eval.json").read_text())


def store_teacher(plan: GapPlan, unit: Unit, log) -> None:
    """The image arm's best checkpoint of ``unit`` as teacher logits in every store (once per store)."""
    ckpt = plan.run_dir("image", next(iter(plan.stores)), unit) / "best.safetensors"
    for label, path in plan.stores.items():
        record = open_store(path).manifest.get("teachers", {}).get(teacher_name(unit))
        if record is None or record["checkpoint"] != str(ckpt.resolve()):
            log(f"[{label}] teacher logits {teacher_name(unit)} from {ckpt}")
            add_teacher_logits(path, ckpt, plan.device, name=teacher_name(unit))


def run_gap(plan: GapPlan, log=print) -> dict:
    """Every arm of every autoencoder and unit, then the report (DIR/gap.json, gap.md, PNG plots)."""
    plan.out.mkdir(parents=True, exist_ok=True)
    prepare_stores(plan, log)
    first = open_store(next(iter(plan.stores.values())))
    for label, path in plan.stores.items():
        manifest = open_store(path).manifest
        if manifest["dataset"]["fingerprint"] != first.manifest["dataset"]["fingerprint"]:
            raise UsageError(
                f"{path}: holds another dataset (or other folds) than {first.path}; the arms of a gap "
                f"study compare the same samples: encode {label}'s store from the same source"
            )
    image_size = default_image_size(first)
    study = {
        "out": str(plan.out),
        "arms": list(plan.arms),
        "units": [u.name for u in plan.units],
        "image_model": plan.image_model,
        "latent_model": plan.latent_model,
        "budget": plan.budget,
        "device": str(plan.device),
        "differs_from_paper": differs_from_paper(plan, image_size, first.manifest["folds"].get("protocol", "engine")),
        "estimate": estimate(plan, log),
    }
    results: dict[str, dict[str, dict[str, dict]]] = {}
    skipped = []
    todo = plan.runs()
    started = time.perf_counter()
    for i, (arm, label, unit) in enumerate(todo, 1):
        cfg = plan.config(arm, label, unit)
        where = f"[{i}/{len(todo)}] {label if arm != 'image' else 'images'} {arm} {unit.name}"
        if arm == "latent-distill":
            if "image" not in plan.arms:
                skipped.append(
                    {
                        "arm": arm,
                        "autoencoder": label,
                        "unit": unit.name,
                        "why": "no image arm to distil from (add image to --arms)",
                    }
                )
                log(f"{where}: skipped, no image arm to distil from")
                continue
            store_teacher(plan, unit, log)
        log(f"{where}: {'reused' if (Path(cfg.out) / 'eval.json').is_file() else 'training'} ({cfg.out})")
        result = run_one(cfg, log)
        test = result["test"]
        log(
            f"{where}: test balanced accuracy {test['balanced_accuracy']:.4f}, AUROC {test['auroc']:.4f} "
            f"({(time.perf_counter() - started) / 60:.1f} min so far)"
        )
        for owner in plan.stores if arm == "image" else [label]:
            results.setdefault(owner, {}).setdefault(arm, {})[unit.name] = {
                "test": {k: test[k] for k in (*METRICS, *MEDMNIST) if k in test},
                "test_by_sigma": {s: m["balanced_accuracy"] for s, m in result.get("test_by_sigma", {}).items()},
                "run": cfg.out,
            }
    report = {
        "schema": SCHEMA,
        "command": plan.command,
        "device": device_name(plan.device),
        "device_type": plan.device.type,
        "versions": versions(plan.device.type == "cuda"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "study": study,
        "skipped": skipped,
        "autoencoders": {label: summarise(label, plan, results.get(label, {})) for label in plan.stores},
    }
    write_json_atomic(plan.out / "gap.json", report)
    write_report(report, plan.out)
    log(f"report: {plan.out / 'gap.md'} ({plan.out / 'gap.json'})")
    return report


def summarise(label: str, plan: GapPlan, arms: dict[str, dict[str, dict]]) -> dict:
    store = open_store(plan.stores[label])
    m = store.manifest
    out = {
        "store": str(store.path),
        "autoencoder": {k: m["autoencoder"][k] for k in ("family", "spec", "pretrained")},
        "latent_shape": m["latent_shape"],
        "image_size": m["image_size"],
        "arms": {},
        "gaps": {},
        "chance": {"balanced_accuracy": 1 / len(m["dataset"]["class_names"]), "auroc": 0.5, "mcc": 0.0},
    }
    medmnist = m["dataset"]["name"].startswith("medmnist:")  # MedMNIST's own ACC/AUC only for its own files
    wanted = (*METRICS, *(MEDMNIST if medmnist else ()))
    metrics = [k for k in wanted if all(k in r["test"] for runs in arms.values() for r in runs.values())]
    for arm, runs in arms.items():
        out["arms"][arm] = {"runs": runs, **{k: spread([r["test"][k] for r in runs.values()]) for k in metrics}}
        curves = [r["test_by_sigma"] for r in runs.values() if r["test_by_sigma"]]
        if curves:
            out["arms"][arm]["test_by_sigma"] = {s: float(np.mean([c[s] for c in curves])) for s in curves[0]}
    for k in metrics:
        out["gaps"][k] = gaps({arm: {u: r["test"][k] for u, r in runs.items()} for arm, runs in arms.items()})
    out["diagnostics"] = latent_diagnostics(store)
    return out


def main_args(args, log=print) -> GapPlan:
    """The plan of ``engine gap``'s command line: stores to encode (--dataset/--autoencoder) or given (--store)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if bool(args.store) == bool(args.autoencoder):
        raise UsageError(
            "engine gap: give --autoencoder A [--autoencoder B ...] (with --dataset, default the "
            "embedded one) to encode stores, or --store S [--store T ...] for stores already encoded"
        )
    arms = tuple(a.strip() for a in args.arms.split(","))
    if unknown := [a for a in arms if a not in ARMS]:
        raise UsageError(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
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
        arms=arms,
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
    plan = main_args(args, log=lambda line: print(line, file=sys.stderr, flush=True))
    plan.command = " ".join(["engine", *getattr(args, "argv", ["gap"])])
    report = run_gap(plan, log=lambda line: print(line, file=sys.stderr, flush=True))
    for label, ae in report["autoencoders"].items():
        g = ae["gaps"].get("balanced_accuracy", {})
        fid, learn = g.get("fidelity_gap"), g.get("learnability_gap")
        print(f"{label}: fidelity gap {fid['mean']:+.3f}" if fid else f"{label}: fidelity gap -", end="")
        print(f", learnability gap {learn['mean']:+.3f} balanced accuracy" if learn else "")
    print(f"results in {plan.out}/gap.md")
    return 0
