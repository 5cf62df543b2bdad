"""`bench evaluation RUN` keeps a run's eval.json as a result file, and its block in docs/results.md shows every
class's metrics with their intervals, the calibration error and the figures, all taken from that file."""

import json

import numpy as np

from bench.cli import main as bench_main
from bench.readme_section import render
from engine.metrics import plot_report, prediction_report, predictions_of
from engine.metrics.bootstrap import Bootstrap

CLASSES = ["no_finding", "nodule", "effusion"]


def _run(tmp_path):
    """A run directory as `engine train` leaves it: eval.json with the per-class report, its PNGs, config.json."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3)) + 2.0 * np.eye(3)[labels]
    run = tmp_path / "run"
    run.mkdir()
    out = {}
    for role in ("val", "test"):
        out[role] = prediction_report(predictions_of(logits, labels, CLASSES), None, Bootstrap(resamples=50))
        plot_report(out[role], run, role, "test")
    (run / "eval.json").write_text(json.dumps(out))
    (run / "config.json").write_text(json.dumps({"train": {"model": "adm-s-film", "batch_size": 64}}))
    return run, out["test"]


def test_a_runs_evaluation_renders_every_class_with_its_intervals_and_figures(tmp_path, capsys):
    run, test = _run(tmp_path)
    results = tmp_path / "results"
    command = "engine train --store latents.zarr --model adm-s-film"
    assert bench_main(["evaluation", str(run), "--name", "tiny", "--command", command, "--out-dir", str(results)]) == 0
    (path,) = results.glob("evaluation-tiny-*.json")
    report = json.loads(path.read_text())
    assert report["command"] == command and report["config"]["model"] == "adm-s-film"
    assert all((results / png).is_file() for png in report["figures"].values())
    page = render([path], root=tmp_path)
    for cls in CLASSES:
        row = next(line for line in page.splitlines() if line.startswith(f"| {cls} |"))
        lo, hi = test["intervals"][f"sensitivity/{cls}"]
        assert f"{test['per_class'][cls]['sensitivity']:.3f} [{lo:.3f}, {hi:.3f}]" in row
    assert f"{test['calibration']['ece']:.3f}" in page and "50 resamples" in page
    assert f"](../results/{report['figures']['reliability']})" in page


def test_a_run_without_eval_json_is_one_line(tmp_path, capsys):
    assert bench_main(["evaluation", str(tmp_path), "--name", "x", "--command", "c"]) == 2
    assert "no eval.json" in capsys.readouterr().err
