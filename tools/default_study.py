"""The paper's comparison on the embedded default store, end to end through the real CLI, in CPU minutes.

    python tools/default_study.py                      # work in runs/default-study, result in bench/results/

Runs, each as the `engine` command a user would type (skipped when its output is already complete):
encode the default set; a noise-conditioned latent classifier; the image-space classifier on the same
samples; that classifier's logits stored once as teacher (`engine encode --teacher`); the latent classifier
again with distillation (the paper's logit MSE, and KL), same settings otherwise. Writes bench/results/default-study-<device>.json (every
command, every run's test metrics and noise curve) with a Markdown table beside it; `bench report --readme`
renders it into the README. Nothing is typed: the gap and the distillation effect are computed here.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import torch

from bench import environment
from bench.readme_section import STUDY_METRICS, STUDY_SCHEMA, render
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


def run(cmd: list[str], done: Path) -> None:
    """Run one step unless ``done`` exists (a finished run's eval.json, or a flag file): a killed study resumes."""
    shown = " ".join(["engine", *cmd[3:]])
    if done.exists():
        print(f"done already: {shown}", file=sys.stderr)
        return
    print(f"running: {shown}", file=sys.stderr)
    subprocess.run(cmd, check=True)
    if done.suffix == ".flag":
        done.write_text(shown + "\n")


def summary(run_dir: Path, command: list[str]) -> dict:
    ev = json.loads((run_dir / "eval.json").read_text())
    out = {"command": " ".join(["engine", *command[3:]]), "test": {k: ev["test"][k] for k in STUDY_METRICS},
           "recall": {k.removeprefix("recall/"): v for k, v in ev["test"].items() if k.startswith("recall/")}}
    if "test_by_sigma" in ev:
        out["test_by_sigma"] = {s: {k: m[k] for k in STUDY_METRICS} for s, m in ev["test_by_sigma"].items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/default-study"))
    parser.add_argument("--store", type=Path, help="an existing store instead of encoding the default into the workdir")
    parser.add_argument("--latent-epochs", type=int, default=40)
    parser.add_argument("--image-epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/default-study-<device>.json)")
    args = parser.parse_args(argv)
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    store = args.store or w / "latents.zarr"
    epochs = ["--patience", str(max(args.latent_epochs, args.image_epochs))]
    steps = {
        "encode": engine("encode", "--out", str(store)),
        "latent": engine("train", "--store", str(store), "--out", str(w / "latent"), *LATENT,
                         "--epochs", str(args.latent_epochs), *epochs),
        "image": engine("train", "--store", str(store), "--out", str(w / "image"), *IMAGE,
                        "--epochs", str(args.image_epochs), *epochs),
        "teacher": engine("encode", "--out", str(store), "--teacher", str(w / "image" / "best.safetensors")),
        **{f"latent+distill-{kind}": engine("train", "--store", str(store), "--out", str(w / f"latent-distill-{kind}"),
                                            *LATENT, "--epochs", str(args.latent_epochs), *epochs, *flags)
           for kind, flags in DISTILL.items()},
    }
    done = {"encode": w / "encode.flag", "latent": w / "latent" / "eval.json", "image": w / "image" / "eval.json",
            "teacher": w / "teacher.flag",
            **{f"latent+distill-{kind}": w / f"latent-distill-{kind}" / "eval.json" for kind in DISTILL}}
    if args.store:
        del steps["encode"]
    for name, cmd in steps.items():
        run(cmd, done[name])

    runs = {name: summary(done[name].parent, steps[name]) for name in steps if name not in ("encode", "teacher")}
    manifest = open_store(store).manifest
    delta = {k: runs["image"]["test"][k] - runs["latent"]["test"][k] for k in STUDY_METRICS}
    effect = {kind: {k: runs[f"latent+distill-{kind}"]["test"][k] - runs["latent"]["test"][k] for k in STUDY_METRICS}
              for kind in DISTILL}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = environment.device_name(torch.device(device))
    report = {
        "schema": STUDY_SCHEMA, "device": device_name, "versions": environment.versions(device == "cuda"),
        "command": " ".join(["python", "tools/default_study.py", *(argv if argv is not None else sys.argv[1:])]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "store": f"{manifest['dataset']['name']}, {manifest['image_size']} px, latents "
                 f"{'x'.join(map(str, manifest['latent_shape']))} from {manifest['autoencoder']['family']} "
                 f"(pretrained: {str(manifest['autoencoder']['pretrained']).lower()})",
        "chance": {"balanced_accuracy": 1 / len(manifest["dataset"]["class_names"]), "auroc": 0.5},
        "steps": {name: " ".join(["engine", *cmd[3:]]) for name, cmd in steps.items()},
        "runs": runs, "gap": delta, "distillation_effect": effect,
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
