"""eval.json of a short `engine train` on a tiny store with patients: the per-class block, the confusion matrix,
ECE and the patient-clustered intervals agree with scikit-learn computed from the run's own logits."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

import engine.evaluate
from engine.autoencoders import load_autoencoder
from engine.cli import main as engine_main
from engine.encode import EncodeOptions, encode
from engine.metrics.predictions import predictions_of
from engine.sources import open_source
from engine.store import open_store

SIZES = {"train": 64, "val": 24, "test": 40}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    args = {"spec": None, "image_size": 32, "sizes": SIZES, "cache_dir": str(root / "cache")}
    out = root / "latents.zarr"
    encode(
        open_source(**args),
        load_autoencoder("default-untrained"),
        EncodeOptions(out=out, image_size=32, source_args=args),
        log=lambda *_: None,
    )
    return out


def test_eval_json_agrees_with_scikit_learn_on_the_runs_logits(store, tmp_path, monkeypatch):
    seen = {}

    def spy(logits, labels, class_names, threshold=0.5):
        seen.setdefault("calls", []).append((np.array(logits), np.array(labels)))
        return predictions_of(logits, labels, class_names, threshold)

    monkeypatch.setattr(engine.evaluate, "predictions_of", spy)
    run = tmp_path / "run"
    args = ["--model", "adm-s-film", "--batch-size", "16", "--epochs", "1", "--lr", "1e-3", "--curve-levels", "2"]
    assert engine_main(["train", "--store", str(store), "--out", str(run), *args]) == 0
    result = json.loads((run / "eval.json").read_text())
    names = open_store(store).manifest["dataset"]["class_names"]
    (_, _), (logits, labels) = seen["calls"]  # val, then test
    test = result["test"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    k = len(names)
    assert test["confusion_matrix"]["counts"] == confusion_matrix(labels, pred, labels=range(k)).tolist()
    assert test["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    ppv, sens, f1, support = precision_recall_fscore_support(labels, pred, labels=range(k), zero_division=np.nan)
    for c, name in enumerate(names):
        got = test["per_class"][name]
        assert got["support"] == support[c]
        for key, want in (("sensitivity", sens[c]), ("ppv", ppv[c]), ("f1", f1[c])):
            assert got[key] == (None if np.isnan(want) else pytest.approx(want)), (name, key)
        if 0 < support[c] < len(labels):
            assert got["auroc"] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
            assert got["auprc"] == pytest.approx(average_precision_score(labels == c, probs[:, c]))
    assert 0 <= test["calibration"]["ece"] <= 1
    assert test["bootstrap"] == {
        "method": "percentile bootstrap",
        "resamples": 1000,
        "seed": 0,
        "level": 0.95,
        "clustered_by": "patient",  # the embedded default source has patient ids
    }
    lo, hi = test["intervals"]["balanced_accuracy"]
    assert lo <= test["balanced_accuracy"] <= hi
    assert {"per_class", "confusion_matrix", "calibration"} <= set(result["val"]) and "intervals" not in result["val"]
    for role in ("val", "test"):
        for kind in ("confusion_matrix", "reliability"):
            with Image.open(run / f"{role}_{kind}.png") as image:
                assert image.format == "PNG"
                image.verify()


def test_log_tensorboard_writes_the_runs_curves_beside_its_record(store, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = ["--model", "adm-s-film", "--batch-size", "16", "--epochs", "1", "--curve-levels", "2"]
    args += ["--log", "tensorboard"]
    assert engine_main(["train", "--store", str(store), "--out", str(run), *args]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["log"] == "tensorboard"
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    losses = [(r["step"], r["loss"]) for r in record if "loss" in r]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(s, pytest.approx(v)) for s, v in losses]
    assert [e.step for e in events.Scalars("val/balanced_accuracy")] == [0]
    assert len(events.Scalars("noise_curve/balanced_accuracy")) == 2
