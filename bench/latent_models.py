"""`bench latent-models GAP.json ...`: one latent model per `engine gap --arms latent` study, side by side, so a user
sees what a smaller latent network costs in accuracy and buys in speed and memory.

Each study trained one latent model on the same store, units and budget; this collects their latent arms into one
committed result (bench/results/latent-models-<device>.json) with every study's command. What it adds is labelled:
the parameter count is counted, and the activation bytes a training step keeps for its backward are counted on
a real CPU step at the store's latent shape (`bench.saved_activations`, plain and lean): a count, not a
measurement of any device's memory. Accuracy and samples/s are the studies' own measurements.

    bench latent-models runs/small-*/gap.json       # -> bench/results/latent-models-<device>.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.environment import result_path
from bench.readme_section import GAP_SCHEMA
from bench.result_file import save_json
from bench.saved_activations import compare
from engine.errors import UsageError
from engine.models import build_model

SCHEMA = "latent-engine/latent-models/1"
COUNT_BATCH = 2  # samples per counted step; bytes are reported per sample
SAME = ("device", "versions")  # what every study must share with the first (besides its protocol below)


def _study(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: not a readable gap.json ({err}); pass an `engine gap` study's gap.json") from None
    if report.get("schema") != GAP_SCHEMA:
        raise UsageError(f"{path}: not an `engine gap` result (schema {report.get('schema')!r}); pass its gap.json")
    if not report.get("complete") or report["study"]["arms"] != ["latent"]:
        raise UsageError(
            f"{path}: a study of arms {report['study']['arms']} (complete: {report.get('complete')}); pass finished "
            "studies of `engine gap --arms latent --latent-model M`, one model each"
        )
    if len(report["autoencoders"]) != 1:
        raise UsageError(f"{path}: a study of {len(report['autoencoders'])} autoencoders; pass one-store studies")
    return report


def _protocol(report: dict) -> dict:
    """What must be equal for two studies' latent arms to compare: the store, units and budget."""
    (ae,) = report["autoencoders"].values()
    study = report["study"]
    return {"store": ae["store"], "units": study["units"], "budget": study["budget"]}


def collect(paths: list[Path]) -> dict:
    """The latent-models result of ``paths`` (gap.json files of one-model latent studies on one store)."""
    studies = [(path, _study(path)) for path in paths]
    if not studies:
        raise UsageError("no gap.json given; pass the gap.json of each `engine gap --arms latent` study")
    first_path, first = studies[0]
    for path, report in studies[1:]:
        for key in SAME:
            if report[key] != first[key]:
                raise UsageError(f"{path}: its {key} differs from {first_path}'s; compare studies run in one place")
        if _protocol(report) != _protocol(first):
            raise UsageError(
                f"{path}: its store, units or budget differ from {first_path}'s; rerun it with the same --store, "
                "--seeds and budget options"
            )
    models = [report["study"]["latent_model"] for _, report in studies]
    if len(set(models)) != len(models):
        raise UsageError(f"the latent model {max(models, key=models.count)} appears twice; pass one study per model")
    (ae,) = first["autoencoders"].values()
    channels, size = ae["latent_shape"][0], ae["latent_shape"][1]
    classes = len(ae["arms"]["latent"]["sensitivity"])
    rows = []
    for path, report in studies:
        (arm,) = (a["arms"]["latent"] for a in report["autoencoders"].values())
        name = report["study"]["latent_model"]
        model = build_model(name, channels, classes, latent_size=size)
        saved = compare(name, tuple(ae["latent_shape"]), COUNT_BATCH)
        rows.append(
            {
                "model": name,
                "command": report["command"],
                "study": str(path),
                "parameters": sum(p.numel() for p in model.parameters()),
                "saved_bytes_per_sample_counted": {
                    memory: saved[memory].activations // COUNT_BATCH for memory in ("plain", "lean")
                },
                "balanced_accuracy": arm["balanced_accuracy"],
                "auroc": arm["auroc"],
                "samples_per_s": arm["samples_per_s"],
            }
        )
    return {
        "schema": SCHEMA,
        "device": first["device"],
        "versions": first["versions"],
        "chance": ae["chance"],
        "latent_shape": ae["latent_shape"],
        "count_batch": COUNT_BATCH,
        **_protocol(first),
        "models": rows,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench latent-models", description=__doc__.split("\n\n")[0])
    p.add_argument("studies", type=Path, nargs="+", help="one gap.json per latent model")
    p.add_argument("--out", type=Path, default=None, help="result file (default bench/results/latent-models-<device>)")
    args = p.parse_args(argv)
    report = collect(args.studies)
    out = args.out or result_path("latent-models", report["device"])
    print(f"wrote {save_json(report, out)}")
    return 0
