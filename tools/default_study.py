"""The paper's comparison on the embedded default store, end to end through the real CLI, in CPU minutes.

    python tools/default_study.py                      # work in runs/default-study, result in bench/results/

Runs, each as the `engine` command a user would type (skipped when its output is already complete, so a
killed study resumes): encode the default set; the image-space classifier; its logits stored once as teacher
(`engine encode --teacher`); then, for each seed, the noise-conditioned latent classifier and the same with
distillation (the paper's logit MSE, and KL), settings otherwise equal. Writes
bench/results/default-study-<device>.json (every command, every seed's test metrics and noise curve, the
teacher logits' own accuracy) with its Markdown beside it; `bench report --readme` renders it into the README.
Nothing is typed: the gap and the distillation effect (paired by seed, with their spread) are computed here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bench import environment
from bench.readme_section import STUDY_METRICS, STUDY_SCHEMA, render
from engine.metrics import classification_metrics
from engine.store import open_store

# Not the paper's defaults, which stay `engine train`'s: on 2,400 long-tailed 4x8x8 latents of an untrained
# autoencoder, LDAM-DRW's unweighted phase only learns the prior and inputs at sigma 80 need EDM's c_in
# (README, "On the embedded default"). The same latent settings serve every latent run.
LATENT = ["--model", "adm-s-film", "--batch-size", "64", "--precondition", "--loss", "ce-cb", "--lr", "1e-4"]
# The paper's logit MSE (0.5 CE + 0.5 MSE) and Hinton's tempered KL, at the plain latent run's learning rate so
# that only the teacher differs (the paper distils at 5e-4).
DISTILL = {"mse": ["--distill", "mse"], "kl": ["--distill", "kl", "--temperature", "4"]}
IMAGE = ["--space", "image", "--model", "resnet18", "--batch-size", "64", "--loss", "ce-cb", "--lr", "3e-4"]


def engine(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", *args]


def shown(cmd: list[str]) -> str:
    """The command as a user types it: `engine ...` rather than this interpreter's `-m engine.cli`."""
    return " ".join(["engine", *cmd[3:]])


def run(cmd: list[str], done: Path) -> None:
    """Run one step unless ``done`` exists (a finished run's eval.json, or a flag file); a training run killed
    after its first checkpoint continues with --resume, so a killed study loses nothing."""
    if done.exists():
        print(f"done already: {shown(cmd)}", file=sys.stderr)
        return
    if (done.parent / "last.safetensors").is_file():
        cmd = [*cmd, "--resume"]
    print(f"running: {shown(cmd)}", file=sys.stderr)
    subprocess.run(cmd, check=True)
    if done.suffix == ".flag":
        done.write_text(shown(cmd) + "\n")


def summary(run_dir: Path) -> dict:
    """Test metrics (and, for noise-conditioned runs, the test curve over sigma) of one finished run."""
    ev = json.loads((run_dir / "eval.json").read_text())
    out = {
        "test": {k: ev["test"][k] for k in STUDY_METRICS},
        "recall": {k.removeprefix("recall/"): v for k, v in ev["test"].items() if k.startswith("recall/")},
    }
    if "test_by_sigma" in ev:
        out["test_by_sigma"] = {s: {k: m[k] for k in STUDY_METRICS} for s, m in ev["test_by_sigma"].items()}
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def pooled(per_seed: list[dict], commands: list[str], seeds: list[int]) -> dict:
    """One run's seeds: every seed's figures, and the mean and spread the README shows."""
    stats = {k: mean_sd([r["test"][k] for r in per_seed]) for k in STUDY_METRICS}
    out = {
        "commands": commands,
        "seeds": seeds,
        "per_seed": per_seed,
        "test": {k: mean for k, (mean, _) in stats.items()},
        "test_sd": {k: sd for k, (_, sd) in stats.items()},
        "recall": {c: mean_sd([r["recall"][c] for r in per_seed])[0] for c in per_seed[0]["recall"]},
    }
    if "test_by_sigma" in per_seed[0]:
        out["test_by_sigma"] = {
            s: {k: mean_sd([r["test_by_sigma"][s][k] for r in per_seed])[0] for k in STUDY_METRICS}
            for s in per_seed[0]["test_by_sigma"]
        }
    return out


def paired_effect(runs: dict, treated: str, base: str) -> dict:
    """treated - base per seed (same seed: same initialisation, batches and noise draws), then mean and spread."""
    pairs = {
        k: [t["test"][k] - b["test"][k] for t, b in zip(runs[treated]["per_seed"], runs[base]["per_seed"])]
        for k in STUDY_METRICS
    }
    return {k: dict(zip(("mean", "sd"), mean_sd(v)), per_seed=v) for k, v in pairs.items()}


def teacher_metrics(store_path: Path) -> dict:
    """How good the stored teacher logits are per split: on the train split the teacher saw those very images."""
    store = open_store(store_path)
    out = {}
    for name in store.splits:
        split = store.split(name)
        valid = split.meta("valid").astype(bool)
        m = classification_metrics(split.meta("teacher_logits")[valid], split.meta("labels")[valid])
        out[name] = {k: m[k] for k in STUDY_METRICS}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/default-study"))
    parser.add_argument("--store", type=Path, help="an existing store instead of encoding the default into the workdir")
    parser.add_argument("--latent-epochs", type=int, default=40)
    parser.add_argument("--image-epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every latent run (the teacher: seed 0)")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/default-study-<device>.json)")
    args = parser.parse_args(argv)
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    store = args.store or w / "latents.zarr"
    patience = ["--patience", str(max(args.latent_epochs, args.image_epochs))]
    latent_runs = {"latent": [], **{f"latent+distill-{kind}": flags for kind, flags in DISTILL.items()}}
    seeds = list(range(args.seeds))
    steps, done = {}, {}
    if not args.store:
        steps["encode"], done["encode"] = engine("encode", "--out", str(store)), w / "encode.flag"
    steps["image"] = engine(
        "train", "--store", str(store), "--out", str(w / "image"), *IMAGE, "--epochs", str(args.image_epochs), *patience
    )
    done["image"] = w / "image" / "eval.json"
    steps["teacher"] = engine("encode", "--out", str(store), "--teacher", str(w / "image" / "best.safetensors"))
    done["teacher"] = w / "teacher.flag"
    for name, flags in latent_runs.items():
        for seed in seeds:
            run_dir = w / f"{name.replace('+', '-')}-s{seed}"
            steps[(name, seed)] = engine(
                "train",
                "--store",
                str(store),
                "--out",
                str(run_dir),
                *LATENT,
                "--epochs",
                str(args.latent_epochs),
                *patience,
                *flags,
                "--seed",
                str(seed),
            )
            done[(name, seed)] = run_dir / "eval.json"
    for key, cmd in steps.items():
        run(cmd, done[key])

    latent = {
        name: pooled([summary(done[(name, s)].parent) for s in seeds], [shown(steps[(name, s)]) for s in seeds], seeds)
        for name in latent_runs
    }
    runs = {
        "latent": latent.pop("latent"),
        "image": pooled([summary(done["image"].parent)], [shown(steps["image"])], [0]),
        **latent,
    }
    manifest = open_store(store).manifest
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = environment.device_name(torch.device(device))
    report = {
        "schema": STUDY_SCHEMA,
        "device": device_name,
        "versions": environment.versions(device == "cuda"),
        "command": " ".join(["python", "tools/default_study.py", *(argv if argv is not None else sys.argv[1:])]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "store": f"{manifest['dataset']['name']}, {manifest['image_size']} px, latents "
        f"{'x'.join(map(str, manifest['latent_shape']))} from {manifest['autoencoder']['family']} "
        f"(pretrained: {str(manifest['autoencoder']['pretrained']).lower()})",
        "chance": {"balanced_accuracy": 1 / len(manifest["dataset"]["class_names"]), "auroc": 0.5},
        "runs": runs,
        "gap": {k: runs["image"]["test"][k] - runs["latent"]["test"][k] for k in STUDY_METRICS},
        "distillation_effect": {kind: paired_effect(runs, f"latent+distill-{kind}", "latent") for kind in DISTILL},
        "teacher_logits": teacher_metrics(store),
    }
    out = args.out or environment.result_path("default-study", device_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    text = render([out])
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
