"""`bench evaluation RUN`: a training run's eval.json kept as a committed result, so its per-class metrics, calibration
and intervals reach docs/results.md rendered, never typed.

eval.json records what was measured but not where: this wraps it with the device, the versions and the command that
made the run (given with --command, as the user ran it: the run directory does not record its command line), and
copies the test split's reliability diagram and confusion matrix beside the result file.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from bench.environment import RESULTS, device_name, versions
from bench.result_file import save_json
from engine.errors import UsageError

SCHEMA = "latent-engine/evaluation/1"
FIGURES = ("reliability", "confusion_matrix")  # the test split's PNGs an evaluation writes beside eval.json


def record(run: Path, name: str, command: str, out_dir: Path = RESULTS) -> Path:
    """bench/results/evaluation-<name>-<device>.json (and its PNGs) from the run directory ``run``."""
    eval_json = run / "eval.json"
    if not eval_json.is_file():
        raise UsageError(f"{eval_json}: no eval.json; pass a finished `engine train` run directory")
    evaluation = json.loads(eval_json.read_text())
    if "intervals" not in evaluation.get("test", {}):
        raise UsageError(f"{eval_json}: written by an engine without per-class metrics and intervals; `engine eval` it")
    device = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    slug = f"evaluation-{name}-" + "-".join(device.lower().split())
    figures = {}
    for figure in FIGURES:
        png = run / f"test_{figure}.png"
        if png.is_file():
            target = out_dir / f"{slug}-{figure}.png"
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
            figures[figure] = target.name
    config = json.loads((run / "config.json").read_text())["train"] if (run / "config.json").is_file() else None
    report = {
        "schema": SCHEMA,
        "name": name,
        "device": device,
        "versions": versions(torch.cuda.is_available()),
        "command": command,
        "config": config,
        "figures": figures,
        "evaluation": evaluation,
    }
    return save_json(report, out_dir / f"{slug}.json")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench evaluation", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished `engine train` run directory (eval.json, config.json, PNGs)")
    p.add_argument("--name", required=True, help="what the run is, in the file name: e.g. first-command")
    p.add_argument("--command", required=True, help="the command that made the run, as it was typed")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where the result and its PNGs go")
    args = p.parse_args(argv)
    print(f"wrote {record(args.run, args.name, args.command, args.out_dir)}")
    return 0
