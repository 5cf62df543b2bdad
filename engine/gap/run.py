"""Running a gap study: the stores it needs, every run of the plan (reused, resumed or trained), the summary
(gap.json) and the report. Every run is an `engine train` run in DIR/runs: a killed study reuses the finished
runs (their eval.json) and resumes the unfinished ones (--resume), but only those whose recorded config
(config.json) is the one it would run now. A run trained with other settings (another budget) is refused
before any training, naming the fields, unless ``--rerun-changed`` retrains it: a report never shows a
budget its runs were not trained with.

A study across machines: each ``--shard i/n`` trains its share (GapPlan.share) and writes no report; shard 0
prepares the stores (encodes them, decodes their reconstructions) and the other shards refuse until they are
prepared; ``--report-only`` then merges the finished runs into gap.json, listing any run still missing."""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import numpy as np

from engine.autoencoders import load_autoencoder
from engine.encode import EncodeOptions, encode
from engine.environment import device_name, versions
from engine.errors import UsageError
from engine.gap.arms import Arm
from engine.gap.estimate import estimate
from engine.gap.paper import PAPER, differs_from_paper
from engine.gap.plan import EVERY_ARM, GapPlan, Unit
from engine.gap.report import write_report
from engine.gap.schedule import skipped_because, train_share
from engine.gap.stats import gaps, spread
from engine.metrics.latent_diagnostics import latent_diagnostics
from engine.reconstruct import add_reconstructions
from engine.sources import open_source
from engine.store import open_store
from engine.store.manifest import write_json_atomic
from engine.training.config import TrainConfig
from engine.training.inputs import default_image_size
from engine.training.options import as_arguments
from engine.views import add_views

SCHEMA = "latent-engine/gap/1"
METRICS = ("balanced_accuracy", "auroc", "mcc")
MEDMNIST = ("medmnist_acc", "medmnist_auc")


def test_details(test: dict) -> dict:
    """What the report shows of one run's test evaluation beyond its metrics: the bootstrap intervals over test
    samples (patients where the store has groups) of the metrics and ECE, the ECE, and every class's sensitivity
    (a macro mean hides the rare class). Empty for an eval.json written before these existed."""
    if "intervals" not in test:
        return {}
    return {
        "test_intervals": {k: test["intervals"][k] for k in (*METRICS, "ece") if k in test["intervals"]},
        "test_bootstrap": test["bootstrap"],
        "ece": test["calibration"]["ece"],
        "sensitivity": {name: c["sensitivity"] for name, c in test["per_class"].items()},
    }


def training_speed(run: Path) -> dict:
    """The run's measured training speed: the median over its epochs of the samples per second its loop recorded
    in metrics.jsonl (the steps alone, without evaluation), and the seconds a --graft fit took; empty when the
    run recorded none."""
    epochs = [
        r["samples_per_s"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val" in r
    ]
    graft = json.loads((run / "config.json").read_text()).get("graft") or {}
    out = {"samples_per_s": float(np.median(epochs))} if epochs else {}
    return out | ({"graft_seconds": graft["seconds"]} if "seconds" in graft else {})


def prepare_stores(plan: GapPlan, log) -> None:
    """Encode the stores to encode (resumable), decode their reconstructions when an arm trains on them."""
    for label, (source_args, spec) in plan.encode.items():
        source = open_source(**source_args)
        ae = load_autoencoder(spec, device=plan.device)
        size = source.native_size
        log(f"[{label}] store {plan.stores[label]}: encode {spec} at {size} px")
        encode(source, ae, EncodeOptions(out=plan.stores[label], image_size=size, source_args=source_args), log=log)
    if any(arm.reconstructions for arm in plan.arms):
        for label, path in plan.stores.items():
            if not (open_store(path).manifest.get("reconstructions") or {}).get("complete"):
                log(f"[{label}] reconstructions of {path}")
                add_reconstructions(path, plan.device, log=log)
    if any(arm.views for arm in plan.arms):
        for label, path in plan.stores.items():
            if not (open_store(path).manifest.get("views") or {}).get("complete"):
                log(f"[{label}] {plan.views} augmented views per image of {path}")
                add_views(path, plan.views, plan.device, log=log)


def changed_runs(plan: GapPlan, runs: list[tuple[Arm, str, Unit]]) -> dict[Path, dict[str, tuple[object, object]]]:
    """The ``runs`` already begun in DIR/runs whose recorded config differs from the one the study would run:
    {run dir: {field: (recorded, now)}}."""
    changed = {}
    for arm, label, unit in runs:
        cfg = plan.config(arm, label, unit)
        recorded_file = Path(cfg.out) / "config.json"
        if not recorded_file.is_file():
            continue
        recorded = TrainConfig.from_dict(json.loads(recorded_file.read_text())["train"])
        if diff := cfg.same_run(vars(recorded)):
            changed[Path(cfg.out)] = {name: (getattr(recorded, name), getattr(cfg, name)) for name in diff}
    return changed


def settle_changed_runs(plan: GapPlan, log) -> None:
    """Refuse a study whose runs (this shard's) were trained with other settings, naming them and the two ways
    out; with ``--rerun-changed``, delete those runs so they are trained again (never another shard's)."""
    changed = changed_runs(plan, plan.share())
    if not changed:
        return
    fields = {name: values for diff in changed.values() for name, values in diff.items()}
    if not plan.rerun_changed:
        now = ", ".join(f"{name} {old}, now {new}" for name, (old, new) in fields.items())
        given = " ".join(as_arguments({name: old for name, (old, _) in fields.items() if name in EVERY_ARM}))
        others = ", ".join(f"{name} {old}" for name, (old, _) in fields.items() if name not in EVERY_ARM)
        others = others and f"{others}: set by the study (its models, stores), not by an every-arm option"
        raise UsageError(
            f"{plan.out}: {len(changed)} of its runs were trained with other settings ({now}; e.g. "
            f"{next(iter(changed))}); pass --rerun-changed to train them again (their results are replaced), "
            f"or rerun with the settings they were trained with ({'; '.join(filter(None, (given, others)))})"
        )
    for run in changed:
        log(f"{run}: trained with other settings ({', '.join(changed[run])}); training it again (--rerun-changed)")
        shutil.rmtree(run)


def require_prepared(plan: GapPlan, fix: str) -> None:
    """Refuse a study whose stores are not encoded (or lack the reconstructions an arm trains on), naming ``fix``:
    a shard other than shard 0 and --report-only prepare nothing."""
    for label, path in plan.stores.items():
        if not Path(path).exists() or not open_store(path, require_complete=False).complete:
            raise UsageError(f"{path}: {label}'s store is not encoded yet; {fix}")
        if any(arm.reconstructions for arm in plan.arms):
            if not (open_store(path).manifest.get("reconstructions") or {}).get("complete"):
                raise UsageError(f"{path}: {label}'s reconstructions are not decoded yet; {fix}")
        if any(arm.views for arm in plan.arms):
            if not (open_store(path).manifest.get("views") or {}).get("complete"):
                raise UsageError(f"{path}: {label}'s augmented views are not encoded yet; {fix}")


def run_gap(plan: GapPlan, log=print, parallel: int = 1) -> dict | None:
    """This shard's runs (every run unsharded), then, unsharded, the report (DIR/gap.json, gap.md, PNG plots); a
    shard writes no report (None): ``report_gap`` merges the shards' runs once they are done."""
    plan.out.mkdir(parents=True, exist_ok=True)
    settle_changed_runs(plan, log)  # before any work: a stale run is refused (or retrained), never reused
    if plan.shard[0] == 0:
        prepare_stores(plan, log)
    else:
        require_prepared(plan, f"shard 0/{plan.shard[1]} prepares the stores: run it first, then this shard again")
    require_one_dataset(plan)
    expected = estimate(plan, log)
    train_share(plan, log, parallel)
    if plan.sharded:
        index, count = plan.shard
        log(f"shard {index}/{count}: its {len(plan.share())} runs are done; no report from a shard")
        return None
    return write_gap(plan, expected, log)


def report_gap(plan: GapPlan, log=print) -> dict:
    """``--report-only``: the report of the runs finished in DIR/runs, training nothing; the runs not finished are
    listed as missing and the report says it is incomplete."""
    require_prepared(plan, "nothing to report: run the study (without --report-only) first")
    if changed := changed_runs(plan, plan.runs()):
        raise UsageError(
            f"{plan.out}: {len(changed)} of its runs were trained with other settings "
            f"({', '.join(next(iter(changed.values())))}; e.g. {next(iter(changed))}); report them with the options "
            "they were trained with, or train them again (the study with --rerun-changed)"
        )
    require_one_dataset(plan)
    return write_gap(plan, None, log)


def require_one_dataset(plan: GapPlan) -> None:
    first = open_store(next(iter(plan.stores.values())))
    for label, path in plan.stores.items():
        manifest = open_store(path).manifest
        if manifest["dataset"]["fingerprint"] != first.manifest["dataset"]["fingerprint"]:
            raise UsageError(
                f"{path}: holds another dataset (or other folds) than {first.path}; the arms of a gap "
                f"study compare the same samples: encode {label}'s store from the same source"
            )


def write_gap(plan: GapPlan, expected: dict | None, log) -> dict:
    """gap.json and the report from the eval.json of every run of the plan finished in DIR/runs: the runs not
    finished are listed as missing, and the report says it is incomplete (never a silent gap in the tables)."""
    first = open_store(next(iter(plan.stores.values())))
    image_size = default_image_size(first)
    study = {
        "out": str(plan.out),
        "arms": [arm.name for arm in plan.arms],
        "units": [u.name for u in plan.units],
        "image_model": plan.image_model,
        "latent_model": plan.latent_model,
        "budget": plan.budget,
        "device": str(plan.device),
        "protocol": PAPER,
        "differs_from_paper": differs_from_paper(plan, image_size, first.manifest["folds"].get("protocol", "engine")),
        "estimate": expected,
    }
    results: dict[str, dict[str, dict[str, dict]]] = {}
    skipped, missing = [], []
    for arm, label, unit in plan.runs():
        cfg = plan.config(arm, label, unit)
        if why := skipped_because(plan, arm):
            skipped.append({"arm": arm.name, "autoencoder": label, "unit": unit.name, "why": why})
            continue
        if not (Path(cfg.out) / "eval.json").is_file():
            missing.append({"arm": arm.name, "autoencoder": label, "unit": unit.name, "run": cfg.out})
            continue
        result = json.loads((Path(cfg.out) / "eval.json").read_text())
        test = result["test"]
        for owner in plan.stores if arm.originals else [label]:
            results.setdefault(owner, {}).setdefault(arm.name, {})[unit.name] = {
                "test": {k: test[k] for k in (*METRICS, *MEDMNIST) if k in test},
                **test_details(test),
                **training_speed(Path(cfg.out)),
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
        "complete": not missing,
        "missing": missing,
        "skipped": skipped,
        "autoencoders": {label: summarise(label, plan, results.get(label, {})) for label in plan.stores},
    }
    write_json_atomic(plan.out / "gap.json", report)
    write_report(report, plan.out)
    if missing:
        log(f"report INCOMPLETE: {len(missing)} runs missing, e.g. {missing[0]['run']} (listed in gap.md)")
    log(f"report: {plan.out / 'gap.html'} ({plan.out / 'gap.md'}, {plan.out / 'gap.json'})")
    return report


def summarise(label: str, plan: GapPlan, arms: dict[str, dict[str, dict]]) -> dict:
    """One autoencoder's part of gap.json: its arms' metrics over units, its gaps, its latent diagnostics."""
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
        if all("samples_per_s" in r for r in runs.values()):
            out["arms"][arm]["samples_per_s"] = spread([r["samples_per_s"] for r in runs.values()])
        if all("sensitivity" in r for r in runs.values()):
            out["arms"][arm]["sensitivity"] = class_sensitivity([r["sensitivity"] for r in runs.values()])
        curves = [r["test_by_sigma"] for r in runs.values() if r["test_by_sigma"]]
        if curves:
            out["arms"][arm]["test_by_sigma"] = {s: float(np.mean([c[s] for c in curves])) for s in curves[0]}
    for k in metrics:
        out["gaps"][k] = gaps({arm: {u: r["test"][k] for u, r in runs.items()} for arm, runs in arms.items()})
    out["diagnostics"] = latent_diagnostics(store)
    if (views := m.get("views") or {}).get("equivariance"):
        out["diagnostics"]["equivariance"] = views["equivariance"]
    return out


def class_sensitivity(runs: list[dict[str, float | None]]) -> dict[str, dict | None]:
    """Every class's test sensitivity over the runs that define it (a class without test samples has none)."""
    return {c: spread(v) if (v := [r[c] for r in runs if r[c] is not None]) else None for c in runs[0]}
